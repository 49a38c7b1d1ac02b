"""Token-aware chunking with llama-index's ``SentenceSplitter``, each chunk mapped to its character span.

Sizes are counted in the embedder's own tokens, so no chunk is silently truncated by the embedder.

Any text is chunked in time linear in its length. The body is first cut into blocks of at most
``MAX_BLOCK_CHARS`` (at a paragraph break, else a line break, else a space, else by length), and
the sentence splitter only ever sees one block, so its cost per block is bounded. Runs of more
than ``MAX_RUN_CHARS`` characters without a space (base64 blobs, minified data, hex dumps, lines
of single words) never reach it: they are cut by length into pieces of at most ``chunk_size`` tokens, preferring a cut
after punctuation. No chunk is longer than ``max_chunk_chars`` characters either (a tokenizer may
count a long unknown word as one token). ``max_chunks`` stops a file early: ``TooManyChunks``.

Section-aware chunks (``retrieval.heading_prefix``): ``with_headings`` gives each chunk the heading
path in force where it starts (``Top > Section > term``, numbering dropped); ``index_text`` puts it
before the chunk's text for the embedder and BM25. The chunk's text, span and citation stay the
document's own words.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tether.errors import TetherError

log = logging.getLogger(__name__)

MAX_BLOCK_CHARS = 20_000  # text handed to the sentence splitter at once
MAX_RUN_CHARS = 1_000  # a run without whitespace longer than this is cut by length, not by the splitter
CHARS_PER_TOKEN_CAP = 10  # no chunk longer than chunk_size * this many characters
HEADING_CHARS = 160  # longest heading prefix; outer titles are dropped first
HEADING_SEPARATOR = " > "

# a run without a space (the sentence splitter splits words at spaces only), anchored at the run's
# start so that matching stays linear
_LONG_RUN = re.compile(rf"(?<![^ ])[^ ]{{{MAX_RUN_CHARS + 1},}}")
_SOFT_CUT = re.compile(r"[\s.!?;:,。．！？；：，、)\]}>\-_/|+=&]")


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    start: int  # character offsets into the document text: text[start:end] == chunk text
    end: int
    heading: str = ""  # heading path where the chunk starts (with_headings); "" = none


_NUMBERING = re.compile(r"^(?:[A-Z]|\d+)(?:\.\d+)*\.\s+|^\d+(?:\.\d+)+\s+")


def heading_text(titles: Sequence[str], max_chars: int = HEADING_CHARS) -> str:
    """The titles joined outermost first, each without its leading section number, consecutive
    repeats dropped, at most ``max_chars`` characters (the outermost titles go first)."""
    parts: list[str] = []
    for title in titles:
        bare = " ".join(_NUMBERING.sub("", title.strip()).split())
        if bare and (not parts or parts[-1] != bare):
            parts.append(bare)
    while len(parts) > 1 and len(HEADING_SEPARATOR.join(parts)) > max_chars:
        parts.pop(0)
    return HEADING_SEPARATOR.join(parts)[:max_chars].strip()


def with_headings(chunks: Sequence[Chunk], path_at: Callable[[int], Sequence[Any]]) -> list[Chunk]:
    """The chunks, each with the heading path in force at its start: ``path_at(offset)`` gives the
    governing sections (objects with a ``title``), outermost first (``ParsedDocument.heading_path``)."""
    return [replace(c, heading=heading_text([s.title for s in path_at(c.start)])) for c in chunks]


def index_text(heading: str | None, text: str) -> str:
    """What the embedder and BM25 see for a chunk: its heading path, a newline, its text."""
    return f"{heading}\n{text}" if heading else text


class TooManyChunks(TetherError):
    """A text gives more chunks than the cap it was chunked under."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"more than {limit} chunks")


@dataclass(frozen=True)
class Splitter:
    """The sentence splitter plus what cutting by length needs (the token counter and sizes)."""

    inner: Any  # llama-index SentenceSplitter
    chunk_size: int
    chunk_overlap: int
    count_tokens: Callable[[str], list]

    @property
    def max_chunk_chars(self) -> int:
        return self.chunk_size * CHARS_PER_TOKEN_CAP

    def split_text(self, text: str) -> list[str]:
        return self.inner.split_text(text)


def make_splitter(chunk_size: int, chunk_overlap: int, count_tokens: Callable[[str], list]) -> Splitter:
    from llama_index.core.node_parser import SentenceSplitter

    inner = SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        tokenizer=count_tokens,
        paragraph_separator="\n\n",
        include_metadata=False,
        include_prev_next_rel=False,
    )
    return Splitter(inner, chunk_size, chunk_overlap, count_tokens)


def _find_span(text: str, chunk: str, cursor: int) -> tuple[int, int] | None:
    """Locate chunk in text at or after cursor; tolerate whitespace the splitter normalised."""
    at = text.find(chunk, cursor)
    if at < 0:
        at = text.find(chunk)
    if at >= 0:
        return at, at + len(chunk)
    words = chunk.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    match = re.compile(pattern).search(text, cursor) or re.compile(pattern).search(text)
    return (match.start(), match.end()) if match else None


def blocks(text: str, max_chars: int = MAX_BLOCK_CHARS) -> Iterator[tuple[int, int]]:
    """(start, end) pieces covering text in order, each at most max_chars long, cut at the last
    paragraph break, else line break, else whitespace in the second half of the window, else by
    length. Linear: every window is searched once."""
    n, at = len(text), 0
    half = max_chars // 2
    while n - at > max_chars:
        window = text[at : at + max_chars]
        cut = window.rfind("\n\n", half)
        cut = cut + 2 if cut >= 0 else -1
        if cut < 0:
            cut = window.rfind("\n", half)
            cut = cut + 1 if cut >= 0 else -1
        if cut < 0:
            space = max(window.rfind(" ", half), window.rfind("\t", half))
            cut = space + 1 if space >= 0 else max_chars
        yield at, at + cut
        at += cut
    if at < n:
        yield at, n


def _segments(text: str, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_run) over text[start:end]: prose for the sentence splitter, and runs without
    a space longer than MAX_RUN_CHARS, which are cut by length."""
    at = start
    for match in _LONG_RUN.finditer(text[start:end]):  # a block cut inside a run starts a run
        a, b = start + match.start(), start + match.end()
        if a > at:
            yield at, a, False
        yield a, b, True
        at = b
    if at < end:
        yield at, end, False


def cut_by_length(text: str, start: int, end: int, splitter: Splitter) -> Iterator[tuple[int, int]]:
    """Pieces of text[start:end] of at most chunk_size tokens and max_chunk_chars characters, cut
    after whitespace or punctuation in the last third of a piece when there is some. The piece
    length adapts to what the previous piece held, so most pieces cost one token count of about
    their own length: linear in the text."""
    limit, most = splitter.chunk_size, splitter.max_chunk_chars
    at, guess = start, most
    while at < end:
        stop = min(end, at + guess)
        shrunk = False
        while True:
            if stop < end:
                last = None
                for last in _SOFT_CUT.finditer(text, at + (stop - at) * 2 // 3, stop):  # noqa: B007 (the last match)
                    pass
                if last is not None:
                    stop = last.end()
            n = len(splitter.count_tokens(text[at:stop]))
            if n <= limit or stop - at <= 1:
                break
            stop = at + max(1, (stop - at) * limit * 9 // (n * 10))
            shrunk = True
        guess = stop - at if shrunk else min(most, guess + guess // 4 + 1)
        yield at, stop
        at = stop


def chunk_text(text: str, body_start: int, splitter: Splitter, max_chunks: int | None = None) -> list[Chunk]:
    """Split text[body_start:] into chunks whose spans index into text.

    Raises ``TooManyChunks`` as soon as there would be more than ``max_chunks`` (None = no cap),
    so a huge file costs no more than the cap's worth of work before it is refused.
    """
    chunks: list[Chunk] = []

    def add(start: int, end: int) -> None:
        if not text[start:end].strip():
            return
        if max_chunks is not None and len(chunks) >= max_chunks:
            raise TooManyChunks(max_chunks)
        chunks.append(Chunk(seq=len(chunks), text=text[start:end], start=start, end=end))

    for b_start, b_end in blocks(text[body_start:]):
        b_start, b_end = b_start + body_start, b_end + body_start
        for s_start, s_end, is_run in _segments(text, b_start, b_end):
            if is_run:
                for a, b in cut_by_length(text, s_start, s_end, splitter):
                    add(a, b)
                continue
            for a, b in _split_prose(text, s_start, s_end, splitter):
                if b - a > splitter.max_chunk_chars:  # a long "word" the tokenizer counts as one token
                    for x, y in cut_by_length(text, a, b, splitter):
                        add(x, y)
                else:
                    add(a, b)
    return chunks


def _split_prose(text: str, start: int, end: int, splitter: Splitter) -> Iterator[tuple[int, int]]:
    """The sentence splitter's chunks of text[start:end] as spans into text.

    A chunk starts inside the previous one (the overlap) or just after it (past whitespace), so it
    is looked for between the previous start and the previous end, taking the last match: in
    repetitive text an earlier match is a copy of the same words one period back, and taking it
    would let the spans drift behind the text until the end of the segment was never covered."""
    segment = text[start:end]
    if not segment.strip():
        return
    prev_start, prev_end = -1, 0
    for piece in splitter.split_text(segment):
        if not piece.strip():
            continue
        if prev_start < 0:
            at = segment.find(piece)
        else:
            gap = prev_end
            while gap < len(segment) and segment[gap].isspace():
                gap += 1
            at = segment.rfind(piece, prev_start + 1, gap + len(piece))
        span = (at, at + len(piece)) if at >= 0 else _find_span(segment, piece, prev_start + 1)
        if span is None:  # should not happen; cut the rest of the segment by length instead
            log.warning("a chunk could not be located in its source text; cutting the rest of the segment by length")
            yield from cut_by_length(text, start + prev_end, end, splitter)
            return
        a, b = span
        prev_start, prev_end = a, max(prev_end, b)
        yield start + a, start + b
