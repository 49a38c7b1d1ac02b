"""The Admin page's body (admins only): feedback, everyone's conversations, accounts, datasets,
training jobs, the conflict detector's training and the model registry. ``training``, ``assistant.evaluation`` and the stores do
the work; this only renders. Training and promotion run as background jobs (``app/ui/jobs.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app.ui import job_view, jobs, names, resources, session
from app.ui.chat_view import render_answer
from app.ui.render import escape_markdown
from app.ui.suites import suite_files
from assistant.logstore import LogStore
from tether.config import TetherConfig
from tether.errors import TetherError

ROOT = Path(__file__).resolve().parents[2]


def feedback_frame(cfg: TetherConfig) -> pd.DataFrame:
    """Every feedback row with its turn's question, answer and model, newest first."""
    with LogStore.open(cfg.db_path) as store:
        rows = store.feedback_rows()
    ids = names.registry_ids(cfg)
    for r in rows:  # models by name and registry id, not by path
        r["model"] = names.model_name(r["model"], ids)
        r["adapter"] = names.adapter_name(r["adapter"], None, ids)
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "created_at",
            "kind",
            "user",
            "asked_by",
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
    job_view.panel(cfg, ("sft", "dpo", "kto"), key="jobs", empty="No training job yet.")


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
        held_text = st.text_area(
            "Held-out corpora (optional): one DATA_DIR:SUITE per line",
            key="promote_held_out",
            help="a corpus the model was not trained on, ingested in DATA_DIR; both models answer SUITE over it "
            "and that gate must pass too",
        )
        if st.button("Promote (runs the gate)", type="primary", key="promote", disabled=not servable):
            try:
                held = registry.parse_held_out([x for x in held_text.splitlines() if x.strip()])
            except TetherError as exc:
                st.error(str(exc))
            else:
                job = jobs.launch_job(
                    cfg.data_dir,
                    "promote",
                    {
                        "model_id": pick,
                        "suite": str(suites[suite]),
                        "user": session.viewer().username or "web-admin",
                        "held_out": [[str(d), str(f)] for d, f in held],
                    },
                )
                st.success(
                    f"Promotion job {job} started: it evaluates the candidate and the served model, then runs the "
                    "gate. It keeps running if you leave or reload the page."
                )
    with right:
        if st.button("Roll back the last promotion", key="rollback"):
            try:
                now = registry.rollback(cfg, user=session.viewer().username or "web-admin")
                st.success(f"Rolled back: now serving {now or 'the configured default model'}.")
            except TetherError as exc:
                st.error(str(exc))
    st.markdown("**Promotion jobs**")
    job_view.panel(cfg, ("promote",), key="promote_jobs", result=_promotion_result, empty="No promotion yet.")


def _promotion_result(job: dict) -> None:
    result = job.get("result") or {}
    if job["status"] == "done":
        st.success(
            f"Promoted {result.get('model_id')} (gate passed; candidate run {str(result.get('candidate_run'))[:8]})."
        )
        return
    if result.get("refused"):
        st.error(f"Promotion refused by the gate: {job['error']}")
        rows = (result.get("gate") or {}).get("rows")
        if rows:
            st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"gate_rows_{job['id']}")
        return
    st.error(f"The promotion job {job['status']}: {job['error']}")


def _detector(cfg: TetherConfig) -> None:
    """``tether train detector`` as a background job: the contradiction classifier trained on pairs
    made from the collection's claims, gated on the labelled conflict sets, promoted when it beats
    the rules (``training/detector.py``)."""
    from training import registry

    st.caption(
        "Trains the contradiction classifier (a MiniLM CrossEncoder) on pairs made from the knowledge "
        "base's claims, on the CPU, then gates it on the labelled conflict sets: it is promoted only when "
        "it beats the rules. Same as `tether train detector`; the command resumes an interrupted run."
    )
    with st.form("detector_form"):
        left, right = st.columns(2)
        max_pairs = left.number_input("Training pairs", 10, 50_000, 3000, step=100, key="det_pairs")
        epochs = right.number_input("Epochs", 0.1, 20.0, 2.0, step=0.5, key="det_epochs")
        steps = left.number_input("Steps (0: the epochs decide)", 0, 100_000, 0, key="det_steps")
        minutes = right.number_input(
            "Stop after (minutes)", 1.0, 24 * 60.0, 15.0, key="det_minutes", help="checkpointed; the command resumes"
        )
        promote = st.checkbox("Promote when it beats the rules", value=True, key="det_promote")
        submitted = st.form_submit_button("Train the conflict detector")
    if submitted:
        out = jobs.new_run_dir(cfg.data_dir, jobs.DETECTOR)
        settings = {
            "max_pairs": int(max_pairs),
            "epochs": float(epochs),
            "max_steps": int(steps) or -1,
            "max_minutes": float(minutes),
            "promote": bool(promote),
            "output_dir": str(out),
        }
        _start(cfg, jobs.DETECTOR, jobs.detector_config, settings, "the detector training")
    job_view.panel(
        cfg, (jobs.DETECTOR,), key="detector_jobs", result=_detector_result, empty="No detector training yet."
    )
    with registry.TrainingStore.open(cfg.db_path) as store:
        detectors = store.list_detectors()
    if detectors:
        st.markdown("**Contradiction classifiers**")
        st.dataframe(
            [
                {
                    "id": d.id,
                    "created": d.created_at[:19].replace("T", " "),
                    "promoted": "✔" if d.promoted_at and not d.retired_at else "",
                    "rules F1 (dev)": (d.gate or {}).get("rules_mean_f1"),
                    "classifier F1 (dev)": (d.gate or {}).get("classifier_mean_f1"),
                    "gate": (d.gate or {}).get("reason"),
                }
                for d in detectors
            ],
            hide_index=True,
            width="stretch",
            key="detectors_table",
        )


def _start(cfg: TetherConfig, method: str, check, settings: dict, what: str) -> None:
    """Launch a background job that records its own row, after ``check`` (its config builder) has
    refused any bad setting here, not in the background."""
    try:
        check(settings["output_dir"], settings)
        pid, _console = jobs.launch(cfg.data_dir, method, settings)
        st.success(f"Started {what} (pid {pid}); it keeps running if you close or reload the page.")
    except TetherError as exc:
        st.error(str(exc))


def _adapt(cfg: TetherConfig) -> None:
    """``tether train adapt`` as a background job: the answerer fine-tuned on the collection alone,
    gated, promoted when it beats the served model (``training/adapt.py``)."""
    st.caption(
        "Fine-tunes the answering model on this knowledge base alone: questions made from its passages, "
        "prompts built exactly as at answer time, cited answers, refusals where the passage is missing, "
        "conflict statements; then the model's own judged answers as preference pairs. It is promoted only "
        "when it beats the model served now on held-out questions. Same as `tether train adapt`; starting "
        "it again resumes an interrupted run."
    )
    with st.form("adapt_form"):
        left, right = st.columns(2)
        questions = left.number_input("Questions made from the passages", 4, 5000, 220, step=20, key="adapt_q")
        minutes = right.number_input("SFT minutes", 0.5, 24 * 60.0, 12.0, key="adapt_minutes")
        preference = left.selectbox("Preference stage", ["dpo", "kto", "none"], key="adapt_pref")
        pref_q = right.number_input("On-policy answers", 0, 2000, 40, key="adapt_pref_q")
        base = left.text_input(
            "Base model ('smollm2' or a checkpoint folder)", cfg.training.base_model, key="adapt_base"
        )
        promote = st.checkbox("Promote when it wins the gate", value=True, key="adapt_promote")
        submitted = st.form_submit_button("Adapt the model to this knowledge base")
    if submitted:
        out = jobs.adapt_dir(cfg)
        settings = {
            "base_model": base.strip(),
            "questions": int(questions),
            "sft_minutes": float(minutes),
            "preference": preference,
            "preference_questions": int(pref_q),
            "promote": bool(promote),
            "output_dir": str(out),
        }
        _start(cfg, jobs.ADAPT, jobs.adapt_config, settings, "adapting the model")
    job_view.panel(cfg, (jobs.ADAPT,), key="adapt_jobs", result=_adapt_result, empty="No adapt run yet.")


def _adapt_result(job: dict) -> None:
    result = job.get("result") or {}
    if job["status"] != "done":
        st.error(f"The adapt job {job['status']}: {job['error']}")
        return
    verdict = "promoted" if result.get("promoted") else "not promoted (see the gate in the Models tab)"
    st.success(f"Trained {result.get('model_id')} in {result.get('minutes')} min: {verdict}")


def _detector_result(job: dict) -> None:
    result = job.get("result") or {}
    gate = result.get("gate") or {}
    if job["status"] != "done":
        st.error(f"The detector job {job['status']}: {job['error']}")
        return
    verdict = "passed" if gate.get("passed") else "not passed"
    st.success(
        f"Registered {result.get('detector_id')}; gate {verdict}: {gate.get('reason', 'not run')}"
        + (f" (threshold {gate['threshold']})" if "threshold" in gate else "")
    )
    if gate.get("sets"):
        st.dataframe(
            [{"set": Path(name).parent.name + "/" + Path(name).name, **row} for name, row in gate["sets"].items()],
            hide_index=True,
            key=f"detector_gate_{job['id']}",
        )


def _conversations(cfg: TetherConfig) -> None:
    """Every user's conversations, read-only."""
    store = resources.logstore(cfg)
    rows = store.conversations(None, all_users=True)
    if not rows:
        st.info("No conversation yet.")
        return
    users = sorted({r.user or "(local user)" for r in rows})
    who = st.multiselect("User", users, key="conv_users")
    view = [r for r in rows if not who or (r.user or "(local user)") in who]
    st.dataframe(
        [
            {
                "user": r.user or "(local user)",
                "title": r.title,
                "questions": r.turns,
                "last": r.last_at[:19],
                "id": r.id,
            }
            for r in view
        ],
        hide_index=True,
        width="stretch",
        key="conv_table",
    )
    if not view:
        return
    labels = {r.id: f"{r.user or '(local user)'} · {r.title[:60]} · {r.last_at[:10]}" for r in view}
    pick = st.selectbox("Read", list(labels), format_func=labels.get, key="conv_read")
    for t in store.conversation_answers(pick):
        with st.chat_message("user"):
            st.markdown(escape_markdown(t.answer.question))
        with st.chat_message("assistant"):
            render_answer(t.answer, store, feedback=t.feedback, cfg=cfg, read_only=True)


def _accounts(cfg: TetherConfig, who) -> None:
    from assistant.accounts import ROLES

    if who.local:  # signed in with the admin password, no account yet
        session.first_admin_form(cfg, need_admin_password=False)
        return
    store = resources.accountstore(cfg)
    accounts = store.accounts()
    st.dataframe(
        [
            {
                "user": a.username,
                "role": a.role,
                "created": a.created_at[:19],
                "last sign-in": (a.last_sign_in_at or "")[:19],
            }
            for a in accounts
        ],
        hide_index=True,
        width="stretch",
        key="accounts_table",
    )
    left, right = st.columns(2)
    with left, st.form("add_account", clear_on_submit=True):
        st.markdown("**Add an account**")
        name = st.text_input("User name", key="acct_new_user")
        password = st.text_input("Password (8 characters or more)", type="password", key="acct_new_password")
        role = st.selectbox("Role", list(ROLES), key="acct_new_role")
        if st.form_submit_button("Add account", key="acct_add"):
            try:
                added = store.create(name, password, role)
                st.success(f"Account {added.username!r} ({added.role}) added.")
            except TetherError as exc:
                st.error(str(exc))
    with right:
        st.markdown("**Change an account**")
        names = [a.username for a in accounts]
        pick = st.selectbox("Account", names, key="acct_pick")
        account = next(a for a in accounts if a.username == pick)
        role = st.selectbox("Role", list(ROLES), index=list(ROLES).index(account.role), key="acct_role")
        new_password = st.text_input("New password (optional)", type="password", key="acct_password")
        if st.button("Save", key="acct_save"):
            try:
                if role != account.role:
                    store.set_role(pick, role)
                if new_password:
                    store.set_password(pick, new_password)
                st.success(f"Account {pick!r} saved.")
            except TetherError as exc:
                st.error(str(exc))
        if st.button("Delete account", key="acct_delete", disabled=pick == who.username):
            try:
                store.delete(pick)
                st.success(f"Account {pick!r} deleted; its conversations stay in the log.")
                st.rerun()
            except TetherError as exc:
                st.error(str(exc))


def main(cfg: TetherConfig, who=None) -> None:
    who = who or session.viewer()
    feedback, conversations, accounts, datasets, training, adapt, detector, models = st.tabs(
        ["Feedback", "Conversations", "Accounts", "Datasets", "Training", "Adapt", "Detector", "Models"]
    )
    with feedback:
        _feedback(cfg)
    with conversations:
        _conversations(cfg)
    with accounts:
        _accounts(cfg, who)
    with datasets:
        _datasets(cfg)
    with training:
        _training(cfg)
    with adapt:
        _adapt(cfg)
    with detector:
        _detector(cfg)
    with models:
        _models(cfg)
