"""The Admin page's body (shown only after the password): feedback, datasets, training jobs and
the model registry. ``training`` and ``assistant.evaluation`` do the work; this only renders."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app.ui import jobs
from app.ui.suites import suite_files
from assistant.logstore import LogStore
from tether.config import TetherConfig
from tether.errors import TetherError

ROOT = Path(__file__).resolve().parents[2]


def feedback_frame(cfg: TetherConfig) -> pd.DataFrame:
    """Every feedback row with its turn's question, answer and model, newest first."""
    with LogStore.open(cfg.db_path) as store:
        rows = store.feedback_rows()
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "created_at",
            "kind",
            "user",
            "comment",
            "edited_answer",
            "passage_id",
            "turn_id",
            "question",
            "answer",
            "generator",
            "model",
            "adapter",
        ],
    )


def _feedback(cfg: TetherConfig) -> None:
    df = feedback_frame(cfg)
    if df.empty:
        st.info("No feedback yet: 👍/👎, edits and 'this source was right' on the Chat page land here.")
        return
    left, mid, right = st.columns(3)
    kinds = left.multiselect("Kind", sorted(df["kind"].unique()), key="fb_kinds")
    models = mid.multiselect("Model", sorted(df["model"].dropna().unique()), key="fb_models")
    text = right.text_input("Question contains", key="fb_text")
    view = df
    if kinds:
        view = view[view["kind"].isin(kinds)]
    if models:
        view = view[view["model"].isin(models)]
    if text:
        view = view[view["question"].str.contains(text, case=False, regex=False)]
    st.caption(
        f"{len(view)} of {len(df)} feedback rows · "
        + ", ".join(f"{k}: {n}" for k, n in df["kind"].value_counts().items())
    )
    st.dataframe(view, hide_index=True, width="stretch", key="fb_table")


def _datasets(cfg: TetherConfig) -> None:
    from training.config import KINDS, DataConfig
    from training.data import build_datasets
    from training.registry import TrainingStore

    kinds = st.multiselect("Kinds", list(KINDS), default=list(KINDS), key="ds_kinds")
    eval_fraction = st.slider("Held out for eval", 0.0, 0.5, 0.1, 0.05, key="ds_eval")
    counterfactuals = st.number_input("Counterfactual rows from the corpus", 0, 500, 0, key="ds_cf")
    if not st.button("Build datasets", type="primary", key="ds_build", disabled=not kinds):
        return
    out = Path(cfg.data_dir) / "datasets" / time.strftime("%Y%m%d-%H%M%S")
    try:
        dcfg = DataConfig(
            out_dir=str(out), kinds=",".join(kinds), eval_fraction=eval_fraction, counterfactuals=int(counterfactuals)
        ).validated()
        with TrainingStore.open(cfg.db_path) as store, st.spinner("Building…"):
            manifests = build_datasets(cfg, dcfg, record=store.record_dataset)
    except TetherError as exc:
        st.error(str(exc))
        return
    st.session_state.last_datasets = {k: m.path for k, m in manifests.items()}
    st.success(f"Datasets written under {out}")
    st.dataframe(
        [
            {
                "kind": k,
                "train": m.n_train,
                "eval": m.n_eval,
                "id": m.id,
                "by source": str(m.counts.get("by_source", {})),
                "dropped (dup/near/long)": f"{m.counts.get('exact_duplicates', 0)}/{m.counts.get('near_duplicates', 0)}/{m.counts.get('too_long', 0)}",
            }
            for k, m in manifests.items()
        ],
        hide_index=True,
        width="stretch",
        key="ds_counts",
    )


def _dataset_dirs(cfg: TetherConfig, method: str) -> list[str]:
    root = Path(cfg.data_dir) / "datasets"
    found = (
        sorted((p for p in root.glob(f"*/{method}") if (p / "train.jsonl").is_file()), reverse=True)
        if root.is_dir()
        else []
    )
    return [str(p) for p in found]


def _training(cfg: TetherConfig) -> None:
    from training.registry import TrainingStore

    with st.form("train_form"):
        method = st.selectbox("Method", ["sft", "dpo", "kto"], key="tr_method")
        dataset = st.text_input(
            "Dataset folder",
            value=(_dataset_dirs(cfg, "sft") or [""])[0],
            key="tr_dataset",
            help="a folder with train.jsonl (built on the Datasets tab, under <data dir>/datasets/)",
        )
        base = st.text_input("Base model", value="smollm2", key="tr_base")
        init_adapter = st.text_input("Start from adapter (optional)", value="", key="tr_init")
        steps = st.number_input("Steps", 1, 10_000, 20, key="tr_steps")
        submitted = st.form_submit_button("Launch training")
    if submitted:
        settings = {
            "dataset": dataset.strip(),
            "base_model": base.strip() or "smollm2",
            "max_steps": int(steps),
            "output_dir": str(jobs.new_run_dir(cfg.data_dir, method)),
        }
        if init_adapter.strip():
            settings["init_adapter"] = init_adapter.strip()
        try:
            from training.config import load_train_config

            load_train_config(
                None, method, defaults=cfg.training, **settings
            )  # refuse a bad setting here, not in the background
            pid, console = jobs.launch(cfg.data_dir, method, settings)
            st.success(
                f"Started {method} (pid {pid}); it keeps running if you close or reload the page. Console: {console}"
            )
        except TetherError as exc:
            st.error(str(exc))
    _jobs_panel(cfg, TrainingStore)


@st.fragment(run_every=3)
def _jobs_panel(cfg: TetherConfig, training_store) -> None:
    with training_store.open(cfg.db_path) as store:
        rows = store.list_jobs()
    if not rows:
        st.caption("No training job yet.")
        return
    st.dataframe(
        [
            {
                "job": r["id"],
                "method": r["method"],
                "status": r["status"],
                "step": f"{r['step']}/{r['total_steps']}",
                "loss": r["loss"],
                "model": r["model_id"],
                "started": r["created_at"][:19],
                "error": r["error"],
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
        key="jobs_table",
    )
    labels = {r["id"]: f"{r['id']} · {r['method']} · {r['status']}" for r in rows}
    pick = st.selectbox("Job", list(labels), format_func=labels.get, key="job_pick")
    job = next(r for r in rows if r["id"] == pick)
    st.progress(
        min(1.0, job["step"] / max(1, job["total_steps"])),
        text=f"{job['status']}: step {job['step']} of {job['total_steps']}",
    )
    curve = jobs.loss_records(job["output_dir"])
    if curve:
        st.line_chart(pd.DataFrame(curve).set_index("step"), y="loss")
    st.code(jobs.log_tail(job["log_path"]) or "(no log lines yet)", language=None)


def _models(cfg: TetherConfig) -> None:
    from training import registry

    with registry.TrainingStore.open(cfg.db_path) as store:
        models = store.list_models()
    if not models:
        st.info("No trained model registered yet: launch a training job first.")
        return
    st.dataframe(
        [
            {
                "id": m.id,
                "kind": m.kind,
                "method": m.method,
                "base": Path(m.base).name,
                "created": m.created_at[:19],
                "promoted": "✔" if m.promoted else "",
                "eval runs": ", ".join(r[:8] for r in m.eval_runs),
            }
            for m in models
        ],
        hide_index=True,
        width="stretch",
        key="models_table",
    )
    servable = [m.id for m in models if m.kind in registry.SERVABLE]
    left, right = st.columns(2)
    with left:
        pick = st.selectbox("Model to promote", servable, key="promote_pick")
        suites = suite_files(cfg.data_dir)
        suite = st.selectbox("Gate suite", list(suites), key="promote_suite")
        if st.button("Promote (runs the gate)", type="primary", key="promote", disabled=not servable):
            try:
                with st.spinner("Evaluating the candidate and the served model…"):
                    result = registry.promote(cfg, pick, suites[suite], user="web-admin")
                st.success(f"Promoted {result['model_id']} (gate passed; candidate run {result['candidate_run'][:8]}).")
            except registry.PromotionRefused as exc:
                st.error(f"Promotion refused by the gate: {exc}")
                gate = getattr(exc, "gate", None)
                rows = getattr(gate, "rows", None)
                if rows:
                    st.dataframe(
                        pd.DataFrame([r.__dict__ if hasattr(r, "__dict__") else r for r in rows]),
                        hide_index=True,
                        key="gate_rows",
                    )
            except TetherError as exc:
                st.error(str(exc))
    with right:
        if st.button("Roll back the last promotion", key="rollback"):
            try:
                now = registry.rollback(cfg, user="web-admin")
                st.success(f"Rolled back: now serving {now or 'the configured default model'}.")
            except TetherError as exc:
                st.error(str(exc))


def main(cfg: TetherConfig) -> None:
    feedback, datasets, training, models = st.tabs(["Feedback", "Datasets", "Training", "Models"])
    with feedback:
        _feedback(cfg)
    with datasets:
        _datasets(cfg)
    with training:
        _training(cfg)
    with models:
        _models(cfg)
