"""The Evaluation page's body: run a suite, chart metrics per model version and per run, list the
conflict suite's misclassified cases. The work is ``assistant.evaluation``'s; this only renders."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app.ui import resources
from app.ui.suites import suite_files
from assistant.evaluation.runs import RunSummary, list_runs, load_run
from assistant.evaluation.suites import ALL_SUITES, QA_SUITES, run_suite
from tether.config import TetherConfig
from tether.errors import TetherError


def model_version(run: RunSummary) -> str:
    """How a run's model is named in the charts: backend:model[+adapter hash]."""
    g = run.generator or {}
    name = f"{g.get('backend', '?')}:{Path(str(g.get('model', ''))).name or '?'}"
    if g.get("adapter_hash"):
        name += f"+{str(g['adapter_hash'])[:8]}"
    return name


def runs_frame(runs: list[RunSummary]) -> pd.DataFrame:
    """One row per (run, metric): the long table the charts draw from."""
    rows = [
        {
            "run": r.label or r.run_id[:8],
            "run_id": r.run_id,
            "created": r.created_at,
            "model": model_version(r),
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
    choice = st.selectbox("Cases", list(files), key="eval_suite")
    generators = ["extractive", "hf", "openai"]
    generator = st.selectbox(
        "Generator", generators, index=generators.index(cfg.assistant.generator), key="eval_generator"
    )
    model = st.text_input(
        "Model (hf)",
        value=cfg.assistant.model,
        key="eval_model",
        help="'smollm2', a checkpoint dir or a registry model path",
    )
    adapter = st.text_input("Adapter (optional)", value=cfg.assistant.adapter or "", key="eval_adapter")
    label = st.text_input("Label", value="", key="eval_label", help="names the run in the charts")
    suites = st.multiselect("Suites", list(ALL_SUITES), default=list(QA_SUITES), key="eval_suites")
    if not st.button("Run evaluation", type="primary", key="eval_run"):
        return
    try:
        run_cfg = cfg.with_assistant(
            generator=generator, model=model.strip() or cfg.assistant.model, adapter=adapter.strip() or None
        )
        with st.status(f"Running {choice} with {generator}…", expanded=False) as status:
            summary = run_suite(
                run_cfg,
                files[choice],
                label=label.strip() or None,
                suites=suites or QA_SUITES,
                model_source=resources.model_source(),
            )
            status.update(label=f"Run {summary.run_id[:8]} stored: {summary.n_items} items", state="complete")
        st.session_state.eval_last = summary.run_id
    except TetherError as exc:
        st.error(str(exc))


def _charts(df: pd.DataFrame) -> None:
    metrics = sorted(df["metric"].unique())
    defaults = [
        m for m in ("answers.f1", "retrieval.recall@5", "grounding.groundedness", "conflicts.f1") if m in metrics
    ] or metrics[:3]
    picked = st.multiselect("Metrics", metrics, default=defaults, key="eval_metrics")
    view = df[df["metric"].isin(picked)]
    if view.empty:
        return
    st.markdown("**Per model version** (mean over its runs)")
    per_model = view.groupby(["model", "metric"], as_index=False)["value"].mean()
    st.altair_chart(
        alt.Chart(per_model)
        .mark_bar()
        .encode(
            x=alt.X("model:N", title=None),
            y=alt.Y("value:Q"),
            color="model:N",
            column=alt.Column("metric:N", title=None),
            tooltip=["model", "metric", "value"],
        ),
    )
    st.markdown("**Per run**")
    st.altair_chart(
        alt.Chart(view)
        .mark_line(point=True)
        .encode(
            x=alt.X("created:T", title="run time"),
            y="value:Q",
            color="metric:N",
            tooltip=["run", "model", "metric", "value"],
        ),
        width="stretch",
    )


def _conflict_results(cfg: TetherConfig, runs: list[RunSummary]) -> None:
    with_conflicts = [r for r in runs if "conflicts" in (r.details or {})]
    st.subheader("Conflict suite")
    if not with_conflicts:
        st.caption("No run of the conflict suite yet: run the handbook conflicts cases.")
        return
    labels = {r.run_id: f"{r.label or r.run_id[:8]} · {model_version(r)} · {r.created_at[:19]}" for r in with_conflicts}
    pick = st.selectbox("Run", list(labels), format_func=labels.get, key="eval_conflict_run")
    run = load_run(cfg.db_path, pick)
    scores = {k: v for k, v in run.metrics.items() if k.startswith("conflicts.")}
    cols = st.columns(min(4, max(1, len(scores))))
    for i, (name, value) in enumerate(sorted(scores.items())[:8]):
        cols[i % len(cols)].metric(name.removeprefix("conflicts."), f"{value:.3f}")
    mis = (run.details.get("conflicts") or {}).get("misclassified") or []
    st.markdown(f"**Misclassified cases: {len(mis)}**")
    if mis:
        st.dataframe(pd.DataFrame(mis), hide_index=True, width="stretch")


def main(cfg: TetherConfig) -> None:
    _run_form(cfg)
    st.divider()
    st.subheader("Runs")
    runs = list_runs(cfg.db_path)
    if not runs:
        st.info("No evaluation runs yet: run a suite above (or `tether eval run`).")
        return
    df = runs_frame(runs)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": r.label or r.run_id[:8],
                    "model": model_version(r),
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
    if not df.empty:
        _charts(df)
    _conflict_results(cfg, runs)
