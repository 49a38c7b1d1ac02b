"""The release gate: a candidate run fails when it is worse than the baseline run beyond
tolerance on any gate metric. ``tether eval gate`` and the training registry both call ``gate``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from assistant.evaluation.compare import DEFAULT_LATENCY_TOLERANCE, comparability_warnings, higher_is_better, regressed
from assistant.evaluation.runs import RunSummary

# Quality metrics only: latency on a shared CPU is too noisy to block a release by default
# (name "latency.total.p95" to gate on it; latency is lower-is-better, with a relative tolerance).
DEFAULT_GATE_METRICS: tuple[str, ...] = (
    "retrieval.recall@5",
    "retrieval.mrr",
    "answers.f1",
    "answers.contains",
    "answers.refusal_accuracy",
    "grounding.groundedness",
    "grounding.citation_precision",
    "grounding.citation_recall",
)

# metric -> True when higher is better (every other metric: see compare.higher_is_better)
GATE_DIRECTIONS: dict[str, bool] = {
    m: higher_is_better(m) for m in DEFAULT_GATE_METRICS + ("latency.total.p95", "answers.false_refusal_rate")
}


@dataclass(frozen=True)
class GateRow:
    metric: str
    candidate: float | None
    baseline: float | None
    delta: float | None  # candidate - baseline
    regressed: bool


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rows: tuple[GateRow, ...]
    reason: str

    def to_json(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "rows": [r.__dict__ for r in self.rows]}


def gate(
    candidate: RunSummary,
    baseline: RunSummary,
    *,
    metrics: Sequence[str] = DEFAULT_GATE_METRICS,
    tolerance: float = 0.02,
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
) -> GateResult:
    """Pass unless the candidate regresses on a metric. A metric the baseline has but the candidate
    lacks counts as a regression; one neither run has is skipped; no metric in common fails."""
    rows = []
    for m in metrics:
        c, b = candidate.metrics.get(m), baseline.metrics.get(m)
        if b is None:
            if c is not None:
                rows.append(GateRow(m, c, None, None, False))
            continue
        if c is None:
            rows.append(GateRow(m, None, b, None, True))
            continue
        rows.append(GateRow(m, c, b, c - b, regressed(m, b, c, tolerance, latency_tolerance)))
    compared = [r for r in rows if r.baseline is not None]
    bad = [r for r in rows if r.regressed]
    notes = comparability_warnings(baseline, candidate)
    if not compared:
        return GateResult(
            False, tuple(rows), f"no gate metric ({', '.join(metrics)}) is in the baseline run {baseline.run_id[:8]}"
        )
    if bad:
        parts = [
            f"{r.metric} {_fmt(r.candidate)} vs {_fmt(r.baseline)}"
            + ("" if r.candidate is None else f" ({r.delta:+.4g})")
            for r in bad
        ]
        reason = f"{len(bad)} regression(s) beyond tolerance {tolerance:g}: " + "; ".join(parts)
    else:
        reason = f"no regression beyond tolerance {tolerance:g} on {len(compared)} metric(s)"
    if notes:
        reason += " (warning: " + "; ".join(notes) + ")"
    return GateResult(not bad, tuple(rows), reason)


def _fmt(v: float | None) -> str:
    return "missing" if v is None else f"{v:.4g}"
