"""The Evaluation page's body: start a suite as a background job (``app/ui/jobs.py``) and watch
its progress; per model version, the history of every gate metric; two runs side by side with
regressions highlighted; the failing cases of a run, filterable; the conflict cases that failed,
each with its two passages. The work is ``assistant.evaluation``'s; this only renders."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app.ui import job_view, jobs
from app.ui.names import generator_label
from app.ui.suites import suite_files
from assistant.evaluation.compare import compare, metric_order
from assistant.evaluation.gate import DEFAULT_GATE_METRICS
from assistant.evaluation.runs import RunSummary, list_runs, load_items, load_run
from assistant.evaluation.suites import ALL_SUITES, QA_SUITES
from tether.config import TetherConfig


def model_version(run: RunSummary, cfg: TetherConfig | None = None) -> str:
    """How a run's model is named in the charts: its name and adapter id, never a path."""
    g = dict(run.generator or {})
    g.pop("decoding", None)
    return generator_label(g, cfg)


def runs_frame(runs: list[RunSummary], cfg: TetherConfig | None = None) -> pd.DataFrame:
    """One row per (run, metric): the long table the charts draw from."""
    rows = [
        {
            "run": r.label or r.run_id[:8],
            "run_id": r.run_id,
            "created": r.created_at,
            "model": model_version(r, cfg),
            "suite": Path(r.suite).name,
            "metric": name,
            "value": value,
        }
        for r in runs
        for name, value in r.metrics.items()
        if isinstance(value, (int, float))
    ]
    return pd.DataFrame(rows, columns=["run", "run_id", "created", "model", "suite", "metric", "value"])


def _run_form(cfg: TetherConfig) -> None:
    st.subheader("Run a suite")
    files = suite_files(cfg.data_dir)
    with st.form("eval_form"):
        choice = st.selectbox("Cases", list(files), key="eval_suite")
        generators = ["extractive", "hf", "openai"]
        generator = st.selectbox(
            "Generator", generators, index=generators.index(cfg.assistant.generator), key="eval_generator"
        )
        model = st.text_input(
            "Model (hf)",
            value=cfg.assistant.model,
            key="eval_model",
            help="'smollm2' (the promoted model when there is one), a checkpoint dir or a registry model path",
        )
        adapter = st.text_input("Adapter (optional)", value=cfg.assistant.adapter or "", key="eval_adapter")
        label = st.text_input("Label", value="", key="eval_label", help="names the run in the charts")
        suites = st.multiselect("Suites", list(ALL_SUITES), default=list(QA_SUITES), key="eval_suites")
        submitted = st.form_submit_button("Run evaluation", type="primary", key="eval_run")
    if submitted:
        job = jobs.launch_job(
            cfg.data_dir,
            "eval",
            {
                "suite": str(files[choice]),
                "generator": generator,
                "model": model.strip() or cfg.assistant.model,
                "adapter": adapter.strip() or None,
                "label": label.strip() or None,
                "suites": suites or list(QA_SUITES),
            },
        )
        st.success(f"Evaluation job {job} started; it keeps running if you leave or reload the page.")
    job_view.panel(
        cfg, ("eval",), key="eval_jobs", result=_eval_result, on_finish=_show_run, empty="No evaluation job yet."
    )


def _show_run(job: dict) -> None:
    """A finished evaluation: its run becomes the one compared (as B) and listed below."""
    run_id = (job.get("result") or {}).get("run_id")
    if job["status"] == "done" and run_id:
        st.session_state.fail_run = run_id
        st.session_state.cmp_b = run_id


def _eval_result(job: dict) -> None:
    result = job.get("result") or {}
    if job["status"] == "done":
        st.success(f"Run {str(result.get('run_id'))[:8]} stored: {result.get('n_items')} items (charted below).")
    else:
        st.error(f"The evaluation job {job['status']}: {job['error']}")


def _history(df: pd.DataFrame) -> None:
    """Per model version, every gate metric over time: one small chart per metric."""
    st.subheader("Gate metrics per model version")
    metrics = sorted(df["metric"].unique(), key=metric_order)
    defaults = [m for m in DEFAULT_GATE_METRICS if m in metrics] or metrics[:4]
    picked = st.multiselect("Metrics", metrics, default=defaults, key="eval_metrics")
    view = df[df["metric"].isin(picked)]
    if view.empty:
        st.caption("None of these metrics in the stored runs: pick others.")
        return
    st.altair_chart(
        alt.Chart(view)
        .mark_line(point=True)
        .encode(
            x=alt.X("created:T", title="run time", axis=alt.Axis(format="%d %b %H:%M", labelAngle=-30)),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("model:N", title="model version", legend=alt.Legend(orient="top")),
            tooltip=["run", "model", "suite", "metric", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=190, height=140)
        .facet(facet=alt.Facet("metric:N", title=None), columns=3)
        .resolve_scale(y="independent"),
    )
    per_model = view.groupby(["model", "metric"], as_index=False)["value"].mean()
    st.caption("Mean per model version over its runs")
    st.dataframe(
        per_model.pivot(index="model", columns="metric", values="value"), width="stretch", key="eval_per_model"
    )


def _run_label(r: RunSummary, cfg: TetherConfig) -> str:
    return f"{r.label or r.run_id[:8]} · {model_version(r, cfg)} · {Path(r.suite).name} · {r.created_at[:16]}"


def _side_by_side(cfg: TetherConfig, runs: list[RunSummary]) -> None:
    st.subheader("Two runs side by side")
    if len(runs) < 2:
        st.caption("Two runs are needed: run another suite, or the same one with another model.")
        return
    labels = {r.run_id: _run_label(r, cfg) for r in runs}
    ids = list(labels)
    left, right, tol = st.columns([2, 2, 1])
    a_id = left.selectbox("A (baseline)", ids, index=1, format_func=labels.get, key="cmp_a")
    b_id = right.selectbox("B (candidate)", ids, index=0, format_func=labels.get, key="cmp_b")
    tolerance = tol.number_input("Tolerance", 0.0, 1.0, 0.02, 0.01, key="cmp_tol")
    by_id = {r.run_id: r for r in runs}
    result = compare(by_id[a_id], by_id[b_id], tolerance=tolerance)
    for w in result.warnings:
        st.warning(f"Not comparable like for like: {w}.")
    table = pd.DataFrame(
        [
            {
                "metric": r.metric,
                "A": r.a,
                "B": r.b,
                "B − A": r.delta,
                "verdict": "regressed" if r.regressed else "improved" if r.improved else "",
            }
            for r in result.rows
        ]
    )
    if table.empty:
        return
    st.caption(
        f"{len(result.regressions)} regression(s) beyond the tolerance (latency: beyond "
        f"{result.latency_tolerance:.0%}), highlighted in red; improvements in green."
    )

    def colour(row):
        shade = {"regressed": "background-color: #f8d7da", "improved": "background-color: #d4edda"}.get(
            row["verdict"], ""
        )
        return [shade] * len(row)

    st.dataframe(
        table.style.apply(colour, axis=1).format({"A": "{:.3f}", "B": "{:.3f}", "B − A": "{:+.3f}"}, na_rep="–"),
        hide_index=True,
        width="stretch",
        key="cmp_table",
    )


def failing_cases(cfg: TetherConfig, run_id: str) -> pd.DataFrame:
    """The QA cases of a run that failed: wrong or refused when an answer was expected, or errored."""
    rows = []
    for item in load_items(cfg.db_path, run_id):
        if item.kind != "qa" or (item.correct is not False and not item.error):
            continue
        gold = item.gold or {}
        expected = "(should refuse)" if gold.get("unanswerable") else " | ".join(gold.get("answers") or [])
        rows.append(
            {
                "case": item.case_id,
                "question": item.question or "",
                "expected": expected,
                "answer": "(refused)" if item.refused else item.prediction or "",
                "sources": ", ".join(dict.fromkeys(r["source"] for r in (item.retrieved or [])[:5])),
                "gold sources": ", ".join(gold.get("sources") or []),
                "groundedness": item.groundedness,
                "error": item.error or "",
            }
        )
    return pd.DataFrame(
        rows,
        columns=["case", "question", "expected", "answer", "sources", "gold sources", "groundedness", "error"],
    )


def _failing(cfg: TetherConfig, runs: list[RunSummary]) -> None:
    st.subheader("Failing cases")
    labels = {r.run_id: _run_label(r, cfg) for r in runs}
    pick = st.selectbox("Run", list(labels), format_func=labels.get, key="fail_run")
    df = failing_cases(cfg, pick)
    run = load_run(cfg.db_path, pick)
    mis = (run.details.get("conflicts") or {}).get("misclassified") or []
    left, right = st.columns([3, 1])
    text = left.text_input("Question, answer or source contains", key="fail_text")
    only_refused = right.checkbox("Refused only", key="fail_refused")
    view = df
    if text:
        hay = (view["question"] + " " + view["answer"] + " " + view["sources"] + " " + view["case"]).str.lower()
        view = view[hay.str.contains(text.lower(), regex=False)]
    if only_refused:
        view = view[view["answer"] == "(refused)"]
    st.markdown(f"**Failing QA cases: {len(view)} of {len(df)}**")
    if not view.empty:
        st.dataframe(view, hide_index=True, width="stretch", key="fail_table")
    if "conflicts" in (run.details or {}):
        _conflict_results(run, mis, text)


def _conflict_results(run: RunSummary, mis: list[dict], text: str) -> None:
    scores = {k: v for k, v in run.metrics.items() if k.startswith("conflicts.")}
    cols = st.columns(min(4, max(1, len(scores))))
    for i, (name, value) in enumerate(sorted(scores.items())):
        cols[i % len(cols)].metric(name.removeprefix("conflicts."), f"{value:.3f}")
    if text:
        mis = [m for m in mis if text.lower() in " ".join(str(v) for v in m.values()).lower()]
    st.markdown(f"**Misclassified cases: {len(mis)}**")
    for m in mis:
        with st.expander(f"{m.get('id')} · {m.get('error')}"):
            a, b = st.columns(2)
            a.html(f'<div class="tether-claim"><small>A</small><br><q>{html.escape(str(m.get("a") or ""))}</q></div>')
            b.html(f'<div class="tether-claim"><small>B</small><br><q>{html.escape(str(m.get("b") or ""))}</q></div>')
            st.caption(
                f"gold kind {m.get('gold_kind') or '–'} · predicted {m.get('predicted_kind') or '–'}"
                + (f" · {m['note']}" if m.get("note") else "")
            )


def main(cfg: TetherConfig) -> None:
    _run_form(cfg)
    st.divider()
    st.subheader("Runs")
    runs = list_runs(cfg.db_path)
    if not runs:
        st.info("No evaluation runs yet: run a suite above (or `tether eval run`).")
        return
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": r.label or r.run_id[:8],
                    "model": model_version(r, cfg),
                    "suite": Path(r.suite).name,
                    "items": r.n_items,
                    "created": r.created_at[:19],
                }
                for r in runs
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    df = runs_frame(runs, cfg)
    if not df.empty:
        _history(df)
    _side_by_side(cfg, runs)
    _failing(cfg, runs)
