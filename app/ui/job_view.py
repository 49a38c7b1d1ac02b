"""The background jobs of one kind on a page (training, evaluation, promotion, the conflict
detector), redrawn every 3 s from ``training_jobs`` (``st.fragment(run_every=...)``), so the page
never waits for them and a reload finds them again: status, progress, the loss curve (training
and the detector), the log tail and the result.
When a job finishes, the whole page runs again so that what it produced (a run, a model) is shown."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from app.ui import jobs
from tether.config import TetherConfig

REFRESH_S = 3
FINISHED = ("done", "failed", "interrupted")


def job_rows(cfg: TetherConfig, methods: Sequence[str]) -> list[dict[str, Any]]:
    from training.registry import TrainingStore

    with TrainingStore.open(cfg.db_path) as store:
        return [r for r in store.list_jobs() if r["method"] in methods]


def panel(
    cfg: TetherConfig,
    methods: Sequence[str],
    *,
    key: str,
    result: Callable[[dict[str, Any]], None] | None = None,
    on_finish: Callable[[dict[str, Any]], None] | None = None,
    empty: str = "No job yet.",
) -> None:
    """The jobs of ``methods``, newest first; ``result(job)`` draws a finished job's result;
    ``on_finish(job)`` runs once for a job this session saw running, before the page is redrawn."""
    _panel(cfg, tuple(methods), key, result, on_finish, empty)


@st.fragment(run_every=REFRESH_S)
def _panel(cfg, methods, key, result, on_finish, empty) -> None:
    rows = job_rows(cfg, methods)
    if not rows:
        st.caption(empty)
        return
    running = {r["id"] for r in rows if r["status"] not in FINISHED}
    seen = st.session_state.setdefault(f"{key}_running", set())
    finished = seen - running
    if finished:  # a job this page watched has finished: redraw the page with its result
        st.session_state[f"{key}_running"] = running
        for job in rows:
            if job["id"] in finished and on_finish is not None:
                on_finish(job)
        st.rerun(scope="app")
    st.session_state[f"{key}_running"] = running
    st.dataframe(
        [
            {
                "job": r["id"],
                "method": r["method"],
                "status": r["status"],
                "step": f"{r['step']}/{r['total_steps']}",
                "loss": r["loss"],
                "model": r["model_id"],
                "started": r["created_at"][:19].replace("T", " "),
                "error": r["error"],
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
        key=f"{key}_table",
    )
    # a label that does not change while the job runs (the browser keeps a select box's text)
    labels = {r["id"]: f"{r['method']} {r['id']} · started {r['created_at'][:19].replace('T', ' ')}" for r in rows}
    pick = st.selectbox("Job", list(labels), format_func=labels.get, key=f"{key}_pick")
    job = next(r for r in rows if r["id"] == pick)
    total = job["total_steps"]
    if job["status"] == "running" and not total:
        st.progress(0.0, text="starting: loading the models…")
    else:
        st.progress(
            min(1.0, job["step"] / max(1, total)) if job["status"] != "done" else 1.0,
            text=f"{job['status']}: step {job['step']} of {total}",
        )
    if job["method"] in ("sft", "dpo", "kto"):
        curve = jobs.loss_records(job["output_dir"])
    elif job["method"] == jobs.DETECTOR:
        curve = jobs.detector_loss_records(job["log_path"])
    else:
        curve = []
    if curve:
        st.line_chart(pd.DataFrame(curve).set_index("step"), y="loss")
    if job["status"] in FINISHED and result is not None:
        result(job)
    with st.expander("Log", expanded=job["status"] == "failed"):
        st.code(jobs.log_tail(job["log_path"]) or "(no log lines yet)", language=None)
