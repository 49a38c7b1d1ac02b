"""Token-aware chunking with llama-index's ``SentenceSplitter``, each chunk mapped to its character span.

Sizes are counted in the embedder's own tokens, so no chunk is silently truncated by the embedder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    start: int  # character offsets into the document text: text[start:end] == chunk text
    end: int


def make_splitter(chunk_size: int, chunk_overlap: int, count_tokens: Callable[[str], list]):
    from llama_index.core.node_parser import SentenceSplitter

    return SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        tokenizer=count_tokens,
        paragraph_separator="\n\n",
        include_metadata=False,
        include_prev_next_rel=False,
    )


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


def chunk_text(text: str, body_start: int, splitter) -> list[Chunk]:
    """Split text[body_start:] into chunks whose spans index into text."""
    body = text[body_start:]
    pieces = splitter.split_text(body)
    chunks: list[Chunk] = []
    cursor = 0
    for piece in pieces:
        if not piece.strip():
            continue
        span = _find_span(body, piece, cursor)
        if span is None:  # should not happen; keep the chunk and its text, say so
            log.warning(
                "chunk %d could not be located in its source text; span set to the last known offset", len(chunks)
            )
            start, end = cursor, cursor
            chunk_str = piece
        else:
            start, end = span
            chunk_str = body[start:end]
            # overlapping chunks start before the previous end; advance past the previous start only
            cursor = start + 1
        chunks.append(Chunk(seq=len(chunks), text=chunk_str, start=start + body_start, end=end + body_start))
    return chunks
