"""Pure metric functions. Every one is defined in docs/EVALUATION.md and tested against hand-computed values.

Retrieval works on a ranked list of ``Retrieved`` items (passage id, source, text) against a
``Gold`` (passage ids, source names, an evidence sentence); answers on strings; latency on lists
of milliseconds.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# -- answers (SQuAD-style) --------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"€", "£", "’", "‘", "“", "”", "–", "—", "…"}
_CURRENCY = {"€": " eur ", "£": " gbp ", "$": " usd "}


def normalize_answer(text: str) -> str:
    """Lowercase; currency signs to codes (€ -> eur); thousands separators and other punctuation
    dropped (decimal points kept); articles removed; whitespace collapsed."""
    text = text.lower()
    for sign, code in _CURRENCY.items():
        text = text.replace(sign, code)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 5,000 -> 5000
    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)  # keep decimal points through punctuation removal
    text = "".join(" " if ch in _PUNCT else ch for ch in text).replace("\0", ".")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals one normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best token-overlap F1 between the normalised prediction and a gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in golds:
        gold = normalize_answer(g).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        same = sum((Counter(pred) & Counter(gold)).values())
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a normalised gold answer appears, on word boundaries, in the normalised prediction
    (long answers such as extractive sentences score 0 on EM but 1 here when they hold the fact)."""
    p = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in p for g in golds))


def strip_citation_marks(text: str) -> str:
    return " ".join(re.sub(r"\s*\[\d+\]", "", text).split())


# -- retrieval --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retrieved:
    id: str
    source: str
    text: str = ""


@dataclass(frozen=True)
class Gold:
    passage_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    evidence: str | None = None

    def __bool__(self) -> bool:
        return bool(self.passage_ids or self.sources or self.evidence)


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def gold_key(item: Retrieved, gold: Gold) -> str | None:
    """Which gold item a retrieved passage matches, or None.

    With gold passage ids, a passage matches its own id. Otherwise, with gold sources, a passage
    matches its source. With only an evidence sentence, a passage matches when it contains it
    (whitespace collapsed, case ignored).
    """
    if gold.passage_ids:
        return item.id if item.id in gold.passage_ids else None
    if gold.sources:
        return item.source if item.source in gold.sources else None
    if gold.evidence and _squash(gold.evidence) in _squash(item.text):
        return "evidence"
    return None


def _n_gold(gold: Gold) -> int:
    return len(set(gold.passage_ids)) or len(set(gold.sources)) or (1 if gold.evidence else 0)


def _first_hits(ranked: Sequence[Retrieved], gold: Gold) -> list[int]:
    """1-based ranks at which each gold item is first matched (later matches of it gain nothing)."""
    seen: set[str] = set()
    ranks = []
    for rank, item in enumerate(ranked, start=1):
        key = gold_key(item, gold)
        if key is not None and key not in seen:
            seen.add(key)
            ranks.append(rank)
    return ranks


def recall_at_k(ranked: Sequence[Retrieved], gold: Gold, k: int) -> float:
    """Share of the gold items matched within the top k."""
    n = _n_gold(gold)
    return sum(1 for r in _first_hits(ranked, gold) if r <= k) / n if n else 0.0


def reciprocal_rank(ranked: Sequence[Retrieved], gold: Gold) -> float:
    """1 / rank of the first passage that matches a gold item; 0 when none does."""
    hits = _first_hits(ranked, gold)
    return 1.0 / hits[0] if hits else 0.0


def ndcg_at_k(ranked: Sequence[Retrieved], gold: Gold, k: int = 10) -> float:
    """Binary-gain nDCG@k: gain 1 at the first rank matching each gold item, 0 elsewhere;
    ideal = every gold item (up to k) at the top ranks."""
    n = _n_gold(gold)
    if not n:
        return 0.0
    dcg = sum(1.0 / math.log2(r + 1) for r in _first_hits(ranked, gold) if r <= k)
    idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(n, k) + 1))
    return dcg / idcg


# -- grounding --------------------------------------------------------------------------------------


def citation_correct(source: str, passage_text: str, gold: Gold, passage_id: str = "") -> bool:
    """A citation is correct when its passage is a gold passage, comes from a gold source, or
    contains the gold evidence sentence."""
    if passage_id and passage_id in gold.passage_ids:
        return True
    if source and source in gold.sources:
        return True
    return bool(gold.evidence and passage_text and _squash(gold.evidence) in _squash(passage_text))


# -- aggregates -------------------------------------------------------------------------------------


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; 0 where a denominator is 0."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def prf(predicted: Sequence[bool], gold: Sequence[bool]) -> tuple[float, float, float]:
    """``precision_recall_f1`` of boolean predictions against boolean labels (the positive class)."""
    pairs = list(zip(predicted, gold))
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    return precision_recall_f1(tp, fp, fn)
