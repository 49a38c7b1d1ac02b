"""Read one file into plain text plus document metadata, or reject it with a clear reason.

Formats: Markdown and text (UTF-8, with a detected fallback encoding), HTML (visible text only:
no script, style, comments or hidden elements), PDF (pypdf, page by page) and DOCX
(python-docx, paragraphs and tables in body order). Document metadata (``title``, ``date``,
``status``, ``authority``) comes from Markdown front matter or a sidecar ``NAME.meta.yaml``
(``report.pdf.meta.yaml`` or ``report.meta.yaml``).

Spans: for Markdown and text files ``ParsedDocument.text`` is the decoded file itself and chunking
starts after the front matter, so ``file_text[start:end]`` is the chunk. For HTML, PDF and DOCX it
is the extracted text, which the ingest ledger stores with the document.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import FileRejected

log = logging.getLogger(__name__)

SUPPORTED = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
SIDECAR_SUFFIX = ".meta.yaml"
META_KEYS = ("title", "date", "status", "authority")
STATUSES = ("current", "superseded", "draft")
AUTHORITIES = ("official", "team", "informal")


@dataclass(frozen=True)
class ParsedDocument:
    kind: str
    text: str
    body_start: int  # chunk text[body_start:]; spans stay relative to text
    title: str
    date: str | None = None  # ISO yyyy-mm-dd
    status: str | None = None
    authority: str | None = None
    page_starts: tuple[int, ...] = ()  # PDF: offset in text where page i+1 begins
    warnings: tuple[str, ...] = field(default=())

    def page_at(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        page = 1
        for i, start in enumerate(self.page_starts):
            if offset >= start:
                page = i + 1
        return page


def is_sidecar(path: Path) -> bool:
    return path.name.endswith(SIDECAR_SUFFIX)


def sidecar_for(path: Path) -> Path | None:
    for candidate in (path.with_name(path.name + SIDECAR_SUFFIX), path.with_name(path.stem + SIDECAR_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def _normalise_meta(raw: dict[str, Any], where: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key in META_KEYS:
        value = raw.get(key)
        if value is None:
            out[key] = None
            continue
        if key == "date":
            if isinstance(value, dt.datetime):
                value = value.date()
            if isinstance(value, dt.date):
                out[key] = value.isoformat()
                continue
            try:
                out[key] = dt.date.fromisoformat(str(value).strip()).isoformat()
            except ValueError as exc:
                raise FileRejected(f"{where}: date {value!r} is not YYYY-MM-DD") from exc
            continue
        text = str(value).strip()
        if key == "status" and text.lower() not in STATUSES:
            raise FileRejected(f"{where}: status {text!r} must be one of {', '.join(STATUSES)}")
        if key == "authority" and text.lower() not in AUTHORITIES:
            raise FileRejected(f"{where}: authority {text!r} must be one of {', '.join(AUTHORITIES)}")
        out[key] = text.lower() if key in ("status", "authority") else text
    return out


def _load_yaml_meta(text: str, where: str) -> dict[str, str | None]:
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise FileRejected(f"{where} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise FileRejected(f"{where} must be a YAML mapping of title/date/status/authority")
    return _normalise_meta(raw, where)


# --- text decoding -------------------------------------------------------------------------


def decode_text(data: bytes) -> tuple[str, str | None]:
    """Decode bytes of a text file: UTF-8 (with or without BOM), UTF-16 with a BOM, else a detected
    single-byte encoding. Returns (text, warning). Rejects binary content."""
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as exc:
            raise FileRejected(f"broken UTF-16 text ({exc.reason} at byte {exc.start})") from exc
    if b"\x00" in data[:8192]:
        raise FileRejected("binary content (NUL bytes) in a text file")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        first_error = exc
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None or best.chaos > 0.2:
        raise FileRejected(
            f"not valid UTF-8 (byte 0x{data[first_error.start]:02x} at offset {first_error.start}) and no other "
            "encoding fits; re-save the file as UTF-8"
        )
    return str(best), f"not UTF-8: decoded as {best.encoding}"


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


def _read_markdown(data: bytes, path: Path, kind: str) -> ParsedDocument:
    text, warning = decode_text(data)
    meta: dict[str, str | None] = {}
    body_start = 0
    match = _FRONT_MATTER.match(text) if kind == "markdown" else None
    if match:
        meta = _load_yaml_meta(match.group(1), "front matter")
        body_start = match.end()
    sidecar = sidecar_for(path)
    if sidecar:
        side = _load_yaml_meta(sidecar.read_text(encoding="utf-8"), sidecar.name)
        meta = {k: side.get(k) or meta.get(k) for k in META_KEYS}
    title = meta.get("title")
    if not title and kind == "markdown":
        heading = re.search(r"^#\s+(.+)$", text[body_start:], re.M)
        title = heading.group(1).strip() if heading else None
    return ParsedDocument(
        kind=kind,
        text=text,
        body_start=body_start,
        title=title or path.stem,
        date=meta.get("date"),
        status=meta.get("status"),
        authority=meta.get("authority"),
        warnings=(warning,) if warning else (),
    )


# --- HTML ----------------------------------------------------------------------------------

_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "aside",
    "nav",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "table",
    "tr",
    "br",
    "hr",
    "figure",
    "figcaption",
    "details",
    "summary",
    "form",
    "fieldset",
    "address",
}
_DROP_TAGS = ("script", "style", "noscript", "template", "head", "iframe", "object", "embed", "svg", "canvas")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d])", re.I)


def html_visible_text(html: str) -> tuple[str, str | None]:
    """The text a reader sees: (text, <title>). Drops scripts, styles, comments and hidden elements."""
    from bs4 import BeautifulSoup, Comment, NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if getattr(tag, "decomposed", False):
            continue
        attrs = tag.attrs or {}
        if (
            "hidden" in attrs
            or str(attrs.get("aria-hidden", "")).lower() == "true"
            or _HIDDEN_STYLE.search(str(attrs.get("style", "")))
        ):
            tag.decompose()
    parts: list[str] = []

    def walk(node: Any) -> None:
        for child in node.children:
            if type(child) is NavigableString:  # not Doctype, Declaration, CData, ProcessingInstruction
                parts.append(str(child))
            elif isinstance(child, Tag):
                block = child.name in _BLOCK_TAGS
                if block:
                    parts.append("\n\n" if child.name not in ("br", "li", "tr", "dt", "dd") else "\n")
                if child.name in ("td", "th"):
                    parts.append(" | ")
                walk(child)
                if block:
                    parts.append("\n\n" if child.name not in ("br", "li", "tr", "dt", "dd") else "\n")

    walk(soup)
    raw = "".join(parts)
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in raw.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, title


def _read_html(data: bytes, path: Path) -> ParsedDocument:
    html, warning = decode_text(data)
    text, html_title = html_visible_text(html)
    return _with_sidecar(path, "html", text, html_title, warnings=(warning,) if warning else ())


def _sidecar_meta(path: Path) -> dict[str, str | None]:
    sidecar = sidecar_for(path)
    return _load_yaml_meta(sidecar.read_text(encoding="utf-8"), sidecar.name) if sidecar else {}


def _with_sidecar(path: Path, kind: str, text: str, own_title: str | None, **extra: Any) -> ParsedDocument:
    """A document whose metadata comes from its sidecar; the title falls back to the file's own, then its name."""
    meta = _sidecar_meta(path)
    return ParsedDocument(
        kind=kind,
        text=text,
        body_start=0,
        title=meta.get("title") or own_title or path.stem,
        date=meta.get("date"),
        status=meta.get("status"),
        authority=meta.get("authority"),
        **extra,
    )


# --- PDF -----------------------------------------------------------------------------------


def _read_pdf(path: Path) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise FileRejected("encrypted PDF: remove the password and ingest again")
            except FileRejected:
                raise
            except Exception as exc:
                raise FileRejected(f"encrypted PDF ({exc}): remove the password and ingest again") from exc
        pages = [(page.extract_text() or "") for page in reader.pages]
        info_title = (reader.metadata.title if reader.metadata else None) or None
    except FileRejected:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise FileRejected(f"corrupt PDF ({type(exc).__name__}: {str(exc)[:120]})") from exc
    starts: list[int] = []
    buf: list[str] = []
    pos = 0
    for page_text in pages:
        cleaned = re.sub(r"[ \t]+\n", "\n", page_text).strip()
        starts.append(pos)
        buf.append(cleaned)
        pos += len(cleaned) + 2
    text = "\n\n".join(buf)
    if not text.strip():
        raise FileRejected("no extractable text (a scanned PDF? run OCR on it first)", skipped=True)
    return _with_sidecar(path, "pdf", text, info_title, page_starts=tuple(starts))


# --- DOCX ----------------------------------------------------------------------------------


def check_zip(path: Path, max_unzipped_mb: float, max_ratio: float) -> None:
    """Reject archives that are not zips or that would inflate dangerously (zip bombs)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise FileRejected(f"corrupt DOCX (not a valid zip archive: {exc})") from exc
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    if total > max_unzipped_mb * 1024 * 1024 or total / packed > max_ratio:
        raise FileRejected(
            f"zip bomb suspected: {total / 1e6:.1f} MB uncompressed from {packed / 1e3:.1f} KB "
            f"(limits: {max_unzipped_mb} MB, ratio {max_ratio}); raise retrieval.max_unzipped_mb if it is genuine"
        )


def _read_docx(path: Path) -> ParsedDocument:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise FileRejected(f"corrupt DOCX ({type(exc).__name__}: {str(exc)[:120]})") from exc
    except Exception as exc:  # lxml parse errors and the like inside a damaged package
        raise FileRejected(f"corrupt DOCX ({type(exc).__name__}: {str(exc)[:120]})") from exc
    blocks: list[str] = []
    body = document.element.body
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(child, document)
            text = para.text.strip()
            if text:
                style = (para.style.name or "") if para.style is not None else ""
                if style.startswith("List"):
                    text = "- " + text
                blocks.append(text)
        elif tag == "tbl":
            table = Table(child, document)
            rows = []
            for row in table.rows:
                cells = [cell.text.strip() for cell in row.cells]
                rows.append(" | ".join(cells))
            if rows:
                blocks.append("\n".join(rows))
    text = "\n\n".join(blocks)
    core_title = (document.core_properties.title or "").strip() or None
    heading = next(
        (
            p.text.strip()
            for p in document.paragraphs
            if p.style is not None and (p.style.name or "").startswith(("Title", "Heading")) and p.text.strip()
        ),
        None,
    )
    return _with_sidecar(path, "docx", text, core_title or heading)


# --- entry point ---------------------------------------------------------------------------


def read_document(path: Path, *, max_unzipped_mb: float = 200.0, max_zip_ratio: float = 100.0) -> ParsedDocument:
    """Parse one supported file. Raises FileRejected with a reason a user can act on."""
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise FileRejected(f"unsupported file type '{path.suffix or '(none)'}'", skipped=True)
    if kind == "pdf":
        with path.open("rb") as fh:
            head = fh.read(1024)
        if b"%PDF-" not in head:
            raise FileRejected("corrupt PDF (no %PDF- header)")
        doc = _read_pdf(path)
    elif kind == "docx":
        check_zip(path, max_unzipped_mb, max_zip_ratio)
        doc = _read_docx(path)
    else:
        data = path.read_bytes()
        if kind == "html":
            doc = _read_html(data, path)
        else:
            doc = _read_markdown(data, path, kind)
    if not doc.text[doc.body_start :].strip():
        raise FileRejected("empty: no text to index", skipped=True)
    return doc
