"""Two stored runs side by side: every metric, the delta, and whether B regressed against A.

Direction: higher is better, except latency (``latency.*``) and ``answers.false_refusal_rate``.
Rates are compared with an absolute tolerance; latencies with a relative one (a share of A's value)
and an absolute floor of 1 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from assistant.evaluation.runs import RunSummary

LOWER_IS_BETTER_PREFIXES = ("latency.",)
LOWER_IS_BETTER = frozenset({"answers.false_refusal_rate"})
DEFAULT_LATENCY_TOLERANCE = 0.5  # a latency regresses when it grows by more than half
LATENCY_FLOOR_MS = 1.0  # ...and by more than this: 0.01 ms -> 0.04 ms is noise, not a regression


def higher_is_better(metric: str) -> bool:
    """Which way is better for a metric: True for quality figures, False for latency and false refusals."""
    return not (metric in LOWER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES))


def is_latency(metric: str) -> bool:
    return metric.startswith("latency.")


def regressed(
    metric: str,
    baseline: float,
    candidate: float,
    tolerance: float,
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
) -> bool:
    """True when ``candidate`` is worse than ``baseline`` by more than the tolerance for that metric."""
    if is_latency(metric):
        return candidate > baseline * (1 + latency_tolerance) + 1e-9 and candidate - baseline > LATENCY_FLOOR_MS
    delta = candidate - baseline
    return (delta < -tolerance - 1e-12) if higher_is_better(metric) else (delta > tolerance + 1e-12)


@dataclass(frozen=True)
class CompareRow:
    metric: str
    a: float | None
    b: float | None
    delta: float | None  # b - a
    regressed: bool  # b worse than a beyond tolerance
    improved: bool


@dataclass(frozen=True)
class Comparison:
    a: RunSummary
    b: RunSummary
    rows: tuple[CompareRow, ...]
    tolerance: float
    latency_tolerance: float
    warnings: tuple[str, ...]  # different suite / corpus: the numbers may not be comparable

    @property
    def regressions(self) -> list[CompareRow]:
        return [r for r in self.rows if r.regressed]


def compare(
    a: RunSummary,
    b: RunSummary,
    *,
    metrics: Sequence[str] | None = None,
    tolerance: float = 0.02,
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
) -> Comparison:
    """Every metric of either run (or only ``metrics``), B against A."""
    names = list(metrics) if metrics else sorted(set(a.metrics) | set(b.metrics), key=metric_order)
    rows = []
    for name in names:
        va, vb = a.metrics.get(name), b.metrics.get(name)
        if va is None or vb is None:
            rows.append(CompareRow(name, va, vb, None, False, False))
            continue
        worse = regressed(name, va, vb, tolerance, latency_tolerance)
        better = regressed(name, vb, va, tolerance, latency_tolerance)
        rows.append(CompareRow(name, va, vb, vb - va, worse, better))
    return Comparison(a, b, tuple(rows), tolerance, latency_tolerance, tuple(comparability_warnings(a, b)))


def comparability_warnings(a: RunSummary, b: RunSummary) -> list[str]:
    out = []
    if a.details.get("suite_hash", a.suite) != b.details.get("suite_hash", b.suite):
        out.append(f"the runs used different case files ({a.suite} vs {b.suite})")
    if a.corpus_hash != b.corpus_hash:
        out.append(f"the runs searched different corpora (corpus hash {a.corpus_hash} vs {b.corpus_hash})")
    return out


_SECTION_ORDER = ("retrieval.", "answers.", "grounding.", "conflicts.", "latency.")


def metric_order(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(_SECTION_ORDER):
        if name.startswith(prefix):
            return (i, name)
    return (len(_SECTION_ORDER), name)
