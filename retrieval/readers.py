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
class Section:
    """A titled part of a document: its title and the span of text it governs (title included).

    Levels: 1-6 for headings (HTML h1-h6, Markdown ``#``-``######``); a definition-list term (HTML
    ``<dt>``, as reference pages give option and parameter names) is ``TERM_LEVEL`` plus its list's
    nesting depth and governs its definition, up to the next term or the end of its list."""

    level: int
    title: str
    title_start: int  # offsets into ParsedDocument.text
    start: int
    end: int


TERM_LEVEL = 7


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
    sections: tuple[Section, ...] = ()  # heading structure (HTML, Markdown), by title_start

    def heading_path(self, offset: int) -> list[Section]:
        """The sections that govern text[offset] and whose title lies before it, outermost first."""
        return [s for s in self.sections if s.start <= offset < s.end and s.title_start < offset]

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
    nul = data.find(b"\x00")
    if nul >= 0:
        utf16 = _bomless_utf16(data)
        if utf16 is not None:
            return utf16
        raise FileRejected(f"binary content (NUL bytes, the first at offset {nul}) in a text file")
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


def _bomless_utf16(data: bytes) -> tuple[str, str] | None:
    """(text, warning) when data reads as UTF-16 without a byte-order mark (NUL in most high bytes
    of ASCII-range text, nothing unprintable once decoded); None otherwise."""
    if len(data) < 4 or len(data) % 2:
        return None
    sample = data[:65536]
    for encoding, high in (("utf-16-le", sample[1::2]), ("utf-16-be", sample[0::2])):
        if high.count(0) < 0.4 * len(high):
            continue
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        printable = sum(1 for ch in text[:20000] if ch.isprintable() or ch in "\n\r\t")
        if "\x00" not in text and printable >= 0.97 * min(len(text), 20000):
            return text, f"no byte-order mark: decoded as {encoding.upper()}"
    return None


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
    sections = _markdown_sections(text, body_start) if kind == "markdown" else ()
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
        sections=sections,
    )


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _markdown_sections(text: str, body_start: int) -> tuple[Section, ...]:
    """ATX headings (``#`` to ``######``) outside fenced code, each governing the text up to the
    next heading of the same or a higher level."""
    found: list[tuple[int, str, int]] = []  # (level, title, offset of the heading line)
    fence: str | None = None
    at = body_start
    for line in text[body_start:].splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        opened = _FENCE.match(bare)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        elif opened:
            fence = opened.group(1)
        else:
            match = _ATX.match(bare)
            if match:
                found.append((len(match.group(1)), match.group(2).strip(), at))
        at += len(line)
    return _close_sections(found, len(text))


def _close_sections(found: list[tuple[int, str, int]], n: int) -> tuple[Section, ...]:
    """Sections from (level, title, start) headings in text order: each ends where the next
    heading of the same or a higher level (a smaller number) starts."""
    out = []
    for i, (level, title, start) in enumerate(found):
        end = next((s for lv, _, s in found[i + 1 :] if lv <= level), n)
        out.append(Section(level, title, start, start, end))
    return tuple(out)


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
    text, title, _ = html_document(html)
    return text, title


# Marks put around headings, terms and definition lists while walking the tree, then taken out
# again with their offsets; an input holding any of these characters gets no sections.
_MARKS = re.compile("[\ue000-\ue0ff]")
_OPEN_TITLE, _CLOSE_TITLE, _OPEN_LIST, _CLOSE_LIST = "\ue000", "\ue001", "\ue002", "\ue003"
_LEVEL_BASE = 0xE010
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


def html_document(html: str) -> tuple[str, str | None, tuple[Section, ...]]:
    """(visible text, <title>, sections): ``html_visible_text`` plus the heading structure (h1-h6,
    and ``<dt>`` terms, which govern their definitions)."""
    from bs4 import BeautifulSoup, Comment, NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        # ``tag.decomposed`` (a getattr of a missing attribute) makes bs4 search the tag's subtree
        # for a child of that name: quadratic on deep nesting. decompose() sets ``_decomposed`` on
        # every descendant, so the instance dict answers in constant time.
        if vars(tag).get("_decomposed"):
            continue
        attrs = tag.attrs or {}
        if (
            "hidden" in attrs
            or str(attrs.get("aria-hidden", "")).lower() == "true"
            or _HIDDEN_STYLE.search(str(attrs.get("style", "")))
        ):
            tag.decompose()
    parts: list[str] = []
    mark = not _MARKS.search(html)

    def walk(root: Any) -> None:
        """Depth-first over the tree with an explicit stack: a document nested 100,000 deep is text
        like any other, not a RecursionError."""
        end = object()
        stack: list[tuple[Any, tuple[str, ...]]] = [(iter(root.children), ())]  # (children, closing parts)
        while stack:
            child = next(stack[-1][0], end)
            if child is end:
                parts.extend(stack.pop()[1])
                continue
            if type(child) is NavigableString:  # not Doctype, Declaration, CData, ProcessingInstruction
                parts.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            block = child.name in _BLOCK_TAGS
            gap = "\n\n" if child.name not in ("br", "li", "tr", "dt", "dd") else "\n"
            if block:
                parts.append(gap)
            if child.name in ("td", "th"):
                parts.append(" | ")
            level = _HEADINGS.get(child.name, TERM_LEVEL if child.name == "dt" else 0) if mark else 0
            if mark and child.name == "dl":
                parts.append(_OPEN_LIST)
            if level:
                parts.append(_OPEN_TITLE + chr(_LEVEL_BASE + level))
            closing = (
                *((_CLOSE_TITLE,) if level else ()),
                *((_CLOSE_LIST,) if mark and child.name == "dl" else ()),
                *((gap,) if block else ()),
            )
            stack.append((iter(child.children), closing))

    walk(soup)
    raw = "".join(parts)
    if not mark:
        return _normalise_html_text(raw), title, ()
    text = _normalise_html_text(_MARKS.sub("", raw))
    return text, title, _html_sections(_normalise_html_text(raw), text)


def _normalise_html_text(raw: str) -> str:
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in raw.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _html_sections(marked: str, text: str) -> tuple[Section, ...]:
    """Sections from the marks in ``marked`` (the normalised text with its marks), as offsets into
    ``text`` (the same without them). Taking a mark out can leave a space or newline that the
    normalisation would have removed; offsets are mapped past those. Anything that does not line up
    gives no sections rather than wrong ones."""
    bare: list[str] = []
    events: list[tuple[int, str]] = []
    at = 0
    for piece in re.split("([\ue000-\ue0ff])", marked):
        if len(piece) == 1 and _MARKS.match(piece):
            events.append((at, piece))
        elif piece:
            bare.append(piece)
            at += len(piece)
    joined = "".join(bare)
    to_text = [0] * (len(joined) + 1)
    j = 0
    for i, ch in enumerate(joined):
        to_text[i] = j
        if j < len(text) and ch == text[j]:
            j += 1
        elif not ch.isspace():
            log.debug("heading marks do not line up with the text; no sections")
            return ()
    to_text[len(joined)] = j
    if j != len(text):
        log.debug("heading marks do not line up with the text; no sections")
        return ()

    found: list[tuple[int, str, int]] = []  # headings: (level, title, start)
    terms: list[Section] = []
    lists: list[list[Section]] = []  # open definition lists: their terms so far
    open_title: tuple[int, int] | None = None  # (level, start) of the title being read
    last_close = -1
    k = 0
    while k < len(events):
        pos, ev = events[k]
        pos = to_text[pos]
        if ev == _OPEN_TITLE and k + 1 < len(events):
            open_title = (ord(events[k + 1][1]) - _LEVEL_BASE, pos)
            k += 1
        elif ev == _CLOSE_TITLE and open_title is not None:
            level, start = open_title
            open_title = None
            name = " ".join(text[start:pos].split())
            if not name:
                pass
            elif level < TERM_LEVEL:
                found.append((level, name, start))
            elif lists:
                mine = lists[-1]
                if mine and last_close >= 0 and not text[last_close:start].strip() and mine[-1].end == last_close:
                    prev = mine.pop()  # a run of terms shares one definition
                    mine.append(Section(prev.level, f"{prev.title}, {name}", prev.title_start, prev.start, pos))
                else:
                    if mine:
                        mine[-1] = _ended(mine[-1], start)
                    mine.append(Section(TERM_LEVEL + len(lists) - 1, name, start, start, pos))
                last_close = pos
        elif ev == _OPEN_LIST:
            lists.append([])
        elif ev == _CLOSE_LIST and lists:
            mine = lists.pop()
            if mine:
                mine[-1] = _ended(mine[-1], pos)
            terms.extend(mine)
        k += 1
    for mine in lists:  # unclosed lists (cannot happen with html.parser) end with the text
        terms.extend(mine[:-1] + [_ended(mine[-1], len(text))] if mine else [])
    sections = list(_close_sections(found, len(text))) + terms
    return tuple(sorted(sections, key=lambda s: (s.title_start, s.level)))


def _ended(section: Section, end: int) -> Section:
    return Section(section.level, section.title, section.title_start, section.start, max(end, section.start))


def _read_html(data: bytes, path: Path) -> ParsedDocument:
    html, warning = decode_text(data)
    text, html_title, sections = html_document(html)
    return _with_sidecar(path, "html", text, html_title, warnings=(warning,) if warning else (), sections=sections)


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
