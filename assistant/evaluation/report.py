"""Markdown and JSON reports of a run, a comparison and a gate result."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from assistant.evaluation.compare import Comparison, metric_order
from assistant.evaluation.gate import GateResult
from assistant.evaluation.runs import EvalItem, RunSummary

SECTIONS = (
    ("retrieval", "Retrieval"),
    ("answers", "Answers"),
    ("grounding", "Grounding"),
    ("conflicts", "Conflicts"),
    ("latency", "Latency (ms)"),
)


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if name.startswith("latency.") else f"{value:.3f}"


def _generator(g: dict) -> str:
    if g.get("backend") == "none":
        return "none (only the conflict detector ran)"
    s = f"{g.get('backend', '?')}:{g.get('model', '?')}"
    if g.get("adapter"):
        s += f" + {g['adapter']}" + (f" ({g['adapter_hash']})" if g.get("adapter_hash") else "")
    return s + (f" [{g['decoding']}]" if g.get("decoding") else "")


def run_markdown(run: RunSummary, items: Sequence[EvalItem] = (), *, failures: int = 10) -> str:
    """The run's provenance, one table per suite, and the first failing cases."""
    lines = [
        f"# Evaluation run {run.run_id[:12]}" + (f" — {run.label}" if run.label else ""),
        "",
        f"- suite: `{run.suite}` ({run.n_items} items; suites {', '.join(run.details.get('suites', []))})",
        f"- generator: {_generator(run.generator)}",
        f"- collection: {run.details.get('collection')} (corpus hash {run.corpus_hash}); top_k {run.details.get('top_k')}",
        f"- git commit: {run.git_commit or 'unknown'}; created {run.created_at}",
    ]
    if run.details.get("fallback"):
        lines.append(f"- note: {run.details['fallback']}")
    for prefix, title in SECTIONS:
        names = sorted((n for n in run.metrics if n.startswith(prefix + ".")), key=metric_order)
        if not names:
            continue
        lines += ["", f"## {title}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {n[len(prefix) + 1 :]} | {_fmt(n, run.metrics[n])} |" for n in names]
    counts = run.details.get("counts")
    if counts:
        lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    wrong = [it for it in items if it.correct is False]
    if wrong:
        lines += ["", f"## Failing cases ({len(wrong)})", ""]
        for it in wrong[:failures]:
            pred = (it.prediction or "").replace("\n", " ")
            lines.append(
                f"- **{it.case_id}** {it.question or ''} → {pred[:160]}" + (" (refused)" if it.refused else "")
            )
    mis = (run.details.get("conflicts") or {}).get("misclassified") or []
    if mis:
        lines += ["", f"## Misclassified conflict cases ({len(mis)})", ""]
        lines += [f"- **{m['id']}** {m['error']}: “{m['a']}” vs “{m['b']}”" for m in mis]
    return "\n".join(lines) + "\n"


def run_json(run: RunSummary, items: Sequence[EvalItem] = ()) -> dict[str, Any]:
    out = run.to_json()
    if items:
        out["items"] = [it.__dict__ for it in items]
    return out


def comparison_markdown(cmp: Comparison) -> str:
    a, b = cmp.a, cmp.b
    lines = [
        f"| metric | A {a.run_id[:8]}{' ' + a.label if a.label else ''} | B {b.run_id[:8]}{' ' + b.label if b.label else ''} | Δ (B−A) | |",
        "|---|---:|---:|---:|---|",
    ]
    for r in cmp.rows:
        flag = "REGRESSION" if r.regressed else ("better" if r.improved else "")
        delta = (
            "—" if r.delta is None else (f"{r.delta:+.1f}" if r.metric.startswith("latency.") else f"{r.delta:+.3f}")
        )
        lines.append(f"| {r.metric} | {_fmt(r.metric, r.a)} | {_fmt(r.metric, r.b)} | {delta} | {flag} |")
    lines += [
        "",
        f"A: {_generator(a.generator)} · {a.suite} · corpus {a.corpus_hash} · {a.created_at}",
        f"B: {_generator(b.generator)} · {b.suite} · corpus {b.corpus_hash} · {b.created_at}",
        f"tolerance {cmp.tolerance:g} (latency: +{cmp.latency_tolerance:.0%}); {len(cmp.regressions)} regression(s)",
    ]
    lines += [f"warning: {w}" for w in cmp.warnings]
    return "\n".join(lines) + "\n"


def comparison_json(cmp: Comparison) -> dict[str, Any]:
    return {
        "a": cmp.a.run_id,
        "b": cmp.b.run_id,
        "tolerance": cmp.tolerance,
        "latency_tolerance": cmp.latency_tolerance,
        "warnings": list(cmp.warnings),
        "rows": [r.__dict__ for r in cmp.rows],
        "regressions": [r.metric for r in cmp.regressions],
    }


def gate_markdown(result: GateResult, candidate: RunSummary, baseline: RunSummary) -> str:
    lines = [
        f"gate {'PASSED' if result.passed else 'FAILED'}: candidate {candidate.run_id[:8]} vs baseline {baseline.run_id[:8]}",
        "",
        "| metric | candidate | baseline | Δ | |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result.rows:
        delta = "—" if r.delta is None else f"{r.delta:+.4g}"
        lines.append(
            f"| {r.metric} | {_fmt(r.metric, r.candidate)} | {_fmt(r.metric, r.baseline)} | {delta} | {'REGRESSION' if r.regressed else ''} |"
        )
    lines += ["", result.reason]
    return "\n".join(lines) + "\n"


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)
