"""Terms: the one stop-word list, content words, and the lexical overlap between a question and a text.

``STOP_WORDS`` are the function words of questions and answers ("how", "the", "must", "per"). The
extractive answerer and the engine score sentences by embedding similarity plus
``LEXICAL_WEIGHT`` x ``lexical_overlap``; conflict detection drops the same words (and a few more of
its own) from the key terms of its claims.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

STOP_WORDS = frozenset(
    "a an the of to in on for and or is are be was were do does did how what which who whom when where why can could "
    "i my me we our you your it its at by with from as that this these those there their they must should may will "
    "would get gets got have has had not no any each per than then so if about into over under up out".split()
)
LEXICAL_WEIGHT = 0.25  # relevance = cosine(question, sentence) + LEXICAL_WEIGHT x lexical_overlap

_TOKEN = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> set[str]:
    """The lower-cased words and numbers of text that are not stop words: 'How many days?' -> {'many', 'days'}."""
    return {w for w in _TOKEN.findall(text.lower()) if w not in STOP_WORDS and len(w) > 1}


def lexical_overlap(question: str, texts: Sequence[str]) -> np.ndarray:
    """For each text, the share of the question's content words it contains (numbers and names
    matter in policies, and embeddings blur them)."""
    qwords = content_words(question)
    return np.array([len(qwords & content_words(t)) / max(1, len(qwords)) for t in texts])
