#!/usr/bin/env python3
"""Check the Debian Reference retrieval QA set against the installed corpus.

For every record in ``debian_reference_qa.jsonl`` this script asserts that the
``evidence`` string (whitespace-normalised) occurs verbatim in the *visible
text* of its ``source`` page, and that the record satisfies the schema rules
documented in ``bench/quality_data.md`` (id format, unique ids, unique
evidence, evidence length 40-250 characters, known source page).

Visible text is extracted with bs4 when it is importable, otherwise with the
stdlib ``html.parser``.  Either way the contents of <head>, <script> and <style>
are dropped, a space is inserted at block-level element boundaries (as a
browser would break lines there), and all whitespace runs (including
non-breaking spaces) are collapsed to a single space.

Usage::

    python3 bench/data/check_debian_qa.py [--qa PATH] [--html-dir DIR] [-v]

Exit status is 0 when every record passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

LOG = logging.getLogger("check_debian_qa")

DEFAULT_HTML_DIR = Path("/usr/share/debian-reference")
DEFAULT_QA = Path(__file__).resolve().parent / "debian_reference_qa.jsonl"

MIN_EVIDENCE = 40
MAX_EVIDENCE = 250
ID_RE = re.compile(r"^d\d{3}$")
REQUIRED_KEYS = ("id", "question", "evidence", "source")

DROP_TAGS = {"head", "script", "style", "title", "noscript", "template"}
BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "body", "br", "caption",
    "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
    "td", "tfoot", "th", "thead", "tr", "ul",
}
VOID_TAGS = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link",
    "meta", "param", "source", "track", "wbr",
}

_WS_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Collapse every whitespace run (incl. NBSP) to one space and strip."""
    return _WS_RE.sub(" ", text).strip()


class _VisibleTextParser(HTMLParser):
    """Stdlib fallback: collect text outside head/script/style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._drop_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROP_TAGS:
            self._drop_depth += 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # Self-closing tags (<br/>, <hr/>, <img/>) never open a dropped region.
        if tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in DROP_TAGS:
            self._drop_depth = max(0, self._drop_depth - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self._drop_depth == 0:
            self.parts.append(data)


def _visible_text_stdlib(html: str) -> str:
    parser = _VisibleTextParser()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def _visible_text_bs4(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(list(DROP_TAGS)):
        tag.decompose()
    for tag in soup.find_all(list(BLOCK_TAGS)):
        tag.insert_before(" ")
        tag.insert_after(" ")
    return soup.get_text()


def visible_text(html: str) -> str:
    """Return whitespace-normalised visible text of an HTML document."""
    try:
        import bs4  # noqa: F401
    except ImportError:
        return normalise(_visible_text_stdlib(html))
    return normalise(_visible_text_bs4(html))


def load_pages(html_dir: Path) -> dict[str, str]:
    pages = {}
    for path in sorted(html_dir.glob("*.en.html")):
        pages[path.name] = visible_text(path.read_text(encoding="utf-8"))
    LOG.debug("loaded %d pages from %s", len(pages), html_dir)
    return pages


def load_records(qa_path: Path) -> list[dict]:
    records = []
    with qa_path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            rec["_line"] = lineno
            records.append(rec)
    return records


def check(records: list[dict], pages: dict[str, str]) -> list[str]:
    """Return a list of human-readable failure messages (empty == pass)."""
    failures: list[str] = []
    seen_ids: set[str] = set()
    seen_evidence: dict[str, str] = {}
    for rec in records:
        where = f"line {rec['_line']} ({rec.get('id', '?')})"
        missing = [k for k in REQUIRED_KEYS if not isinstance(rec.get(k), str) or not rec.get(k).strip()]
        if missing:
            failures.append(f"{where}: missing/empty keys {missing}")
            continue
        extra = set(rec) - set(REQUIRED_KEYS) - {"_line"}
        if extra:
            failures.append(f"{where}: unexpected keys {sorted(extra)}")
        if not ID_RE.match(rec["id"]):
            failures.append(f"{where}: bad id format {rec['id']!r}")
        if rec["id"] in seen_ids:
            failures.append(f"{where}: duplicate id")
        seen_ids.add(rec["id"])

        evidence = normalise(rec["evidence"])
        if not MIN_EVIDENCE <= len(evidence) <= MAX_EVIDENCE:
            failures.append(f"{where}: evidence length {len(evidence)} outside {MIN_EVIDENCE}-{MAX_EVIDENCE}")
        if evidence in seen_evidence:
            failures.append(f"{where}: evidence duplicates {seen_evidence[evidence]}")
        seen_evidence[evidence] = rec["id"]

        text = pages.get(rec["source"])
        if text is None:
            failures.append(f"{where}: unknown source page {rec['source']!r}")
            continue
        count = text.count(evidence)
        if count == 0:
            failures.append(f"{where}: evidence not found in {rec['source']}: {evidence[:80]!r}")
        else:
            LOG.debug("%s: ok (%d occurrence(s) in %s)", where, count, rec["source"])
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA)
    ap.add_argument("--html-dir", type=Path, default=DEFAULT_HTML_DIR)
    ap.add_argument("--dump-text", type=Path, default=None,
                    help="write each page's normalised visible text to DIR/<page>.txt and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    if not args.html_dir.is_dir():
        LOG.error("HTML folder %s not found; install debian-reference-en (apt-get install debian-reference-en)",
                  args.html_dir)
        return 1
    pages = load_pages(args.html_dir)
    if not pages:
        LOG.error("no *.en.html pages in %s", args.html_dir)
        return 1

    if args.dump_text:
        args.dump_text.mkdir(parents=True, exist_ok=True)
        for name, text in pages.items():
            (args.dump_text / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        LOG.info("wrote %d page texts to %s", len(pages), args.dump_text)
        return 0

    records = load_records(args.qa)
    failures = check(records, pages)
    for msg in failures:
        LOG.error("%s", msg)
    per_page: dict[str, int] = {}
    for rec in records:
        per_page[rec.get("source", "?")] = per_page.get(rec.get("source", "?"), 0) + 1
    LOG.info("questions per page: %s", ", ".join(f"{k}={v}" for k, v in sorted(per_page.items())))
    status = "PASS" if not failures else "FAIL"
    print(f"{status}: {len(records) - len({m.split(':')[0] for m in failures})}/{len(records)} records ok "
          f"across {len(pages)} pages in {args.html_dir} ({len(failures)} failure(s))")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
