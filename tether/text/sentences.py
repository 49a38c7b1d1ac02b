"""The one sentence splitter (character spans; used by citation checks, conflict claims, the extractive answerer,
the engine and the training data) and the citation markers inside sentences."""

from __future__ import annotations

import re

_ABBREV = {
    "e.g",
    "i.e",
    "etc",
    "vs",
    "no",
    "nr",
    "art",
    "approx",
    "incl",
    "excl",
    "dr",
    "mr",
    "mrs",
    "ms",
    "st",
    "fig",
    "p",
    "pp",
    "min",
    "max",
}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)|\n(?=#)|(?<=:)\n")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans (start, end) of the sentences of text, stripped of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start()
        piece = text[start:end]
        last_word = re.search(r"([\w.]+)\.$", piece.rstrip())
        if last_word and last_word.group(1).lower() in _ABBREV and "\n" not in match.group(0):
            continue  # "e.g. the" is not a boundary
        if (
            re.search(r"\d\.$", piece)
            and match.group(0).strip() == ""
            and end < len(text)
            and text[match.end() : match.end() + 1].isdigit()
        ):
            continue
        _add(text, start, end, spans)
        start = match.end()
    _add(text, start, len(text), spans)
    return spans


def split_sentences_text(text: str, min_words: int = 3) -> list[str]:
    """The sentences of text with at least ``min_words`` words, whitespace collapsed."""
    return [" ".join(text[s:e].split()) for s, e in split_sentences(text) if len(text[s:e].split()) >= min_words]


def _add(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return
    lead = len(piece) - len(piece.lstrip())
    spans.append((start + lead, start + lead + len(stripped)))


_CITE = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


def citation_numbers(sentence: str) -> list[int]:
    out: list[int] = []
    for group in _CITE.findall(sentence):
        out.extend(int(x) for x in re.split(r"\s*,\s*", group))
    return out


def strip_citations(sentence: str) -> str:
    return _CITE.sub("", sentence).strip()


def heading_prefix(sentence: str) -> int:
    """Length of a heading line glued to the front of a sentence ("Daily allowance\nThe daily…": a
    short unpunctuated first line followed by more text), including the newline; 0 if none."""
    first, sep, rest = sentence.partition("\n")
    if sep and rest.strip() and len(first.split()) <= 5 and not first.rstrip().endswith((".", ":", ";", ",")):
        return len(first) + 1
    return 0
