"""The training commands, registered into the main ``tether`` app by ``register(app, models_app)``:

    tether train data  --out DIR                 -> training.data.build_datasets
    tether train sft|dpo|kto --config FILE.yaml  -> training.trainers.run   (--plan: print the plan only)
    tether train pipeline --config FILE.yaml     -> training.pipeline.run_pipeline (data -> sft -> dpo/kto -> export -> gate)
    tether train detector [--out DIR]            -> training.detector.run (pairs -> CrossEncoder -> gate -> promote)
    tether train reranker [--out DIR]            -> training.reranker.run (synthetic questions -> CrossEncoder -> gate -> promote)
    tether train adapt [--out DIR]               -> training.adapt.run (questions -> engine prompts -> SFT -> on-policy DPO/KTO -> gate -> promote)
    tether train jobs                            -> training.registry.TrainingStore.list_jobs
    tether export MODEL --out DIR                -> training.export.export
    tether models list | promote | rollback      -> training.registry
    tether models set-admin-password             -> training.admin.set_admin_password

Everything that changes models (train, export, promote, rollback) passes ``training.admin.require_admin``
first: ``--admin-password`` or ``$TETHER_ADMIN_PASSWORD`` once an admin password is set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from tether.cli import config_flags, load
from tether.errors import TetherError
from training.adapt import AdaptConfig
from training.config import TrainConfig, load_train_config
from training.detector import DetectorConfig
from training.reranker import RerankerConfig


@contextmanager
def _training_log(enabled: bool = True) -> Iterator[None]:
    """The training package's progress lines on stderr while a command trains, not again through
    the root handler (its level and handlers are restored after). ``enabled`` False: as it was."""
    import logging

    lib_log = logging.getLogger("training")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    saved = lib_log.level, lib_log.propagate
    if enabled:
        lib_log.addHandler(handler)
        lib_log.setLevel(logging.INFO)
        lib_log.propagate = False
    try:
        yield
    finally:
        lib_log.removeHandler(handler)
        lib_log.setLevel(saved[0])
        lib_log.propagate = saved[1]


def _echo_run(res, id_key: str, gate: dict | None) -> None:
    """A trained cross-encoder's run (``training.cross_encoder.CrossEncoderRun``) as JSON on stdout."""
    summary = {
        "model": str(res.model_dir) if res.finished else None,
        "finished": res.finished,
        "steps": res.steps,
        "seconds": round(res.seconds, 1),
        "final_loss": res.final_loss,
        "resumed_from": res.resumed_from,
        "pairs": res.manifest,
        id_key: res.registered_id,
        "job_id": res.job_id,
        "gate": gate,
    }
    typer.echo(json.dumps(summary, indent=2, default=str))
    if not res.finished:
        typer.echo("stopped at --max-minutes: rerun the same command to resume", err=True)


train_app = typer.Typer(
    help="Training: datasets from the log, SFT / DPO / KTO with LoRA or QLoRA.", no_args_is_help=True
)


ADMIN = typer.Option(None, "--admin-password", envvar="TETHER_ADMIN_PASSWORD", help="admin password (once one is set)")


def _admin(cfg, password: str | None) -> None:
    from training.admin import require_admin

    require_admin(cfg.data_dir, password, surface="cli")


@train_app.command("data")
def data_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="folder receiving sft/, dpo/, kto/"),
    kinds: str = typer.Option("sft,dpo,kto", "--kinds", help="comma-separated subset of sft, dpo, kto"),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction"),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="drop rows longer than this"),
    near_dup: float = typer.Option(0.9, "--near-dup", help="near-duplicate Jaccard threshold"),
    synthetic: int = typer.Option(
        0, "--synthetic", help="backtranslated Q/A rows from document chunks (uses the configured LLM)"
    ),
    counterfactuals: int = typer.Option(0, "--counterfactuals", help="counterfactual rows made from the corpus"),
    counterfactual_cases: Path | None = typer.Option(
        None, "--counterfactual-cases", help="JSONL of QA cases to make counterfactuals from"
    ),
    tokenizer: str | None = typer.Option(
        "smollm2", "--tokenizer", help="model whose tokenizer measures length ('' = chars/4)"
    ),
    seed: int = typer.Option(0, "--seed"),
    admin_password: str | None = ADMIN,
) -> None:
    """Build the SFT / DPO / KTO datasets (JSONL + manifest) from the log database."""
    from training.config import DataConfig
    from training.data import build_datasets
    from training.registry import TrainingStore

    cfg = load(ctx)
    _admin(cfg, admin_password)
    dcfg = DataConfig(
        out_dir=str(out),
        kinds=kinds,
        eval_fraction=eval_fraction,
        max_tokens=max_tokens,
        near_dup_threshold=near_dup,
        synthetic=synthetic,
        counterfactuals=counterfactuals,
        counterfactual_cases=str(counterfactual_cases) if counterfactual_cases else None,
        tokenizer=tokenizer or None,
        seed=seed,
    ).validated()
    tok = None
    if dcfg.tokenizer:
        from transformers import AutoTokenizer

        from assistant.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(dcfg.tokenizer, cfg.models_dir), local_files_only=True)
    generator = None
    if synthetic:
        from assistant.engine import build_generator
        from training.registry import RegistryModelSource

        generator, fallback = build_generator(cfg, None, model_source=RegistryModelSource())
        if fallback:
            raise TetherError(f"--synthetic needs an LLM generator: {fallback}")
    with TrainingStore.open(cfg.db_path) as store:
        manifests = build_datasets(cfg, dcfg, generator=generator, tokenizer=tok, record=store.record_dataset)
    for kind, m in manifests.items():
        typer.echo(
            f"{kind}: {m.n_train} train, {m.n_eval} eval -> {m.path} (id {m.id}; dropped: {m.counts['exact_duplicates']} exact, "
            f"{m.counts['near_duplicates']} near duplicates, {m.counts['too_long']} too long; by source {m.counts['by_source']})"
        )


def _train_stage(cfg, tc: TrainConfig, procs, *, plan: bool, admin_password: str | None) -> None:
    """One ``tether train sft|dpo|kto`` on this rank: the plan, the admin check, the progress log on
    stderr and the result on stdout come from the main process only; the others train and wait."""
    from training.trainers import main_only

    if plan:
        if not procs.is_main:
            return
        from transformers import AutoConfig

        from training.planner import detect_device, plan_for_model
        from training.trainers import resolve_base

        p = plan_for_model(
            AutoConfig.from_pretrained(resolve_base(tc, cfg.models_dir), local_files_only=True),
            tc,
            detect_device(tc.device),
        )
        for line in p.describe():
            typer.echo(line)
        return
    main_only(procs, lambda: _admin(cfg, admin_password))  # once: a failed sign-in counts once

    from training.trainers import run

    with _training_log(procs.is_main):  # progress on stderr once: not from the other ranks
        res = run(tc, cfg)
    if not procs.is_main:
        return
    typer.echo(
        json.dumps(
            {
                "adapter": str(res.adapter_dir),
                "model_id": res.model_id,
                "steps": res.steps,
                "final_loss": res.final_loss,
                "loss_curve": str(res.loss_curve),
                "resumed_from": res.resumed_from,
                "job_id": res.job_id,
                "stopped_at_max_minutes": res.stopped_at_max_minutes,
            },
            indent=2,
        )
    )
    if res.stopped_at_max_minutes:
        typer.echo("stopped at --max-minutes with the adapter of that step saved: rerun to train on", err=True)


def _train(method: str):
    @config_flags(
        TrainConfig, exclude=("method",)
    )  # --base-model, --max-steps, ... one per field, help from its metadata
    def command(
        ctx: typer.Context,
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML of training.config.TrainConfig fields"),
        plan: bool = typer.Option(
            False, "--plan", help="print the memory/speed plan for this model and device, then stop"
        ),
        admin_password: str | None = ADMIN,
        **overrides: Any,
    ) -> None:
        from training.trainers import MainProcessFailed, processes

        cfg = load(ctx)
        tc = load_train_config(config, method, for_plan=plan, defaults=cfg.training, **overrides)
        procs = processes(tc.device)  # under `accelerate launch`: this rank; rank 0 alone talks and records
        try:
            _train_stage(cfg, tc, procs, plan=plan, admin_password=admin_password)
        except MainProcessFailed:
            raise typer.Exit(2) from None  # the main process reports the error itself

    command.__doc__ = (
        f"Train a LoRA adapter with {method.upper()} (trl); rerun the same command to resume an interrupted run."
    )
    return command


for _m in ("sft", "dpo", "kto"):
    train_app.command(_m)(_train(_m))


@train_app.command("pipeline")
def pipeline_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        ..., "--config", "-c", help="pipeline YAML (sections data, sft, preference, export, promote)"
    ),
    admin_password: str | None = ADMIN,
) -> None:
    """The whole loop: datasets -> SFT -> DPO/KTO -> export + parity -> gate -> promote or refuse."""
    from training.pipeline import load_pipeline_config, run_pipeline

    cfg = load(ctx)
    pc = load_pipeline_config(config, defaults=cfg.training)
    _admin(cfg, admin_password)
    tok = None
    if pc.data.tokenizer:
        from transformers import AutoTokenizer

        from assistant.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(pc.data.tokenizer, cfg.models_dir), local_files_only=True)
    summary = run_pipeline(cfg, pc, tokenizer=tok)
    typer.echo(json.dumps(summary, indent=2, default=str))
    if "promotion" in summary and not summary["promotion"]["promoted"]:
        raise typer.Exit(1)


@train_app.command("detector")
@config_flags(DetectorConfig, exclude=("out_dir",))
def detector_cmd(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="folder for pairs, checkpoints and the model (default: <data>/models/detector)"
    ),
    collection: str | None = typer.Option(None, "--collection", "-c", help="collection whose claims make the pairs"),
    gate_cases: list[Path] | None = typer.Option(
        None,
        "--gate-cases",
        help="labelled conflict sets whose dev halves gate promotion (default: bench/data/conflicts_*/cases.jsonl"
        " and, whole, examples/eval/handbook_conflicts.jsonl)",
    ),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="promote when it beats the rules on dev"),
    admin_password: str | None = ADMIN,
    **overrides: Any,
) -> None:
    """Train the contradiction classifier (a MiniLM CrossEncoder) on pairs made from the collection's
    claims, on the CPU; register it, gate it on the dev halves and promote it when it beats the rules.
    Rerun the same command to resume an interrupted run."""

    from training.detector import default_gate_sets, run

    cfg = load(ctx, collection=collection)
    _admin(cfg, admin_password)
    folder = out or Path(cfg.models_dir) / "detector"
    given = {k: v for k, v in overrides.items() if v is not None}
    dcfg = DetectorConfig(out_dir=str(folder), **given).validated()
    sets = list(gate_cases) if gate_cases else default_gate_sets(Path(__file__).resolve().parent.parent)
    missing = [str(p) for p in sets if not Path(p).is_file()]
    if missing:
        raise TetherError(f"--gate-cases: no such file {', '.join(missing)}")
    with _training_log():
        res, report = run(cfg, dcfg, gate_sets=sets, promote=promote)
    _echo_run(res, "detector_id", {k: v for k, v in (report or {}).items() if k != "by_threshold"} or None)


@train_app.command("reranker")
@config_flags(RerankerConfig, exclude=("out_dir",))
def reranker_cmd(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="work folder: pairs, checkpoints, versions vN/ (default: <data>/models/reranker-<collection>)",
    ),
    collection: str | None = typer.Option(
        None, "--collection", "-c", help="collection whose chunks make the questions"
    ),
    gate_qa: list[Path] | None = typer.Option(
        None,
        "--gate-qa",
        help="labelled JSONL sets (question, evidence, split) whose dev rows also gate promotion (repeatable)",
    ),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="promote when it wins its gate"),
    list_only: bool = typer.Option(False, "--list", help="list the trained rerankers and stop"),
    admin_password: str | None = ADMIN,
    **overrides: Any,
) -> None:
    """Train a reranker (a MiniLM CrossEncoder) on questions made from the collection's own chunks,
    on the CPU; register it, gate it (search with and without it) and promote it for the collection
    when it wins. Rerun the same command to resume an interrupted run."""
    import shlex
    import sys

    from training.registry import TrainingStore
    from training.reranker import run

    cfg = load(ctx, collection=collection)
    if list_only:
        with TrainingStore.open(cfg.db_path) as store:
            rows = store.list_rerankers()
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2, default=str))
        return
    _admin(cfg, admin_password)
    folder = out or Path(cfg.models_dir) / f"reranker-{cfg.retrieval.collection}"
    given = {k: v for k, v in overrides.items() if v is not None}
    rcfg = RerankerConfig(out_dir=str(folder), **given).validated()
    missing = [str(p) for p in gate_qa or () if not Path(p).is_file()]
    if missing:
        raise TetherError(f"--gate-qa: no such file {', '.join(missing)}")
    with _training_log():
        command = shlex.join(["tether", *sys.argv[1:]])
        res, report = run(cfg, rcfg, gate_qa=list(gate_qa or ()), promote=promote, command=command)
    _echo_run(res, "reranker_id", report)


@train_app.command("adapt")
@config_flags(AdaptConfig, exclude=("out_dir",))
def adapt_cmd(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="run folder, reused to resume (default: <data>/models/adapt-<collection>)"
    ),
    collection: str | None = typer.Option(None, "--collection", "-c", help="collection the model learns"),
    gate_qa: list[Path] | None = typer.Option(
        None,
        "--gate-qa",
        help="labelled QA JSONL sets whose dev rows (split: dev) join the gate's held-out questions (repeatable)",
    ),
    held_out: list[str] | None = typer.Option(
        None,
        "--held-out",
        help="DATA_DIR:QA_JSONL of a corpus the model does not learn (ingested in DATA_DIR): its dev rows gate "
        "promotion too (repeatable)",
    ),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="gate and promote when it wins"),
    admin_password: str | None = ADMIN,
    **overrides: Any,
) -> None:
    """Fine-tune the answerer on the collection alone: questions made from its chunks, prompts built
    by the engine's own retrieval and context selection, SFT rows (answers cited \\[n], refusals on
    near-misses, conflict statements, counterfactual contexts), then on-policy DPO or KTO from the
    SFT model's own judged replies; gate it and promote it when it beats the served model. Rerun the
    same command to resume an interrupted run."""
    from training.adapt import run

    cfg = load(ctx, collection=collection)
    _admin(cfg, admin_password)
    folder = out or Path(cfg.models_dir) / f"adapt-{cfg.retrieval.collection}"
    given = {k: v for k, v in overrides.items() if v is not None}
    acfg = AdaptConfig(out_dir=str(folder), **given).validated()
    missing = [str(p) for p in gate_qa or () if not Path(p).is_file()]
    if missing:
        raise TetherError(f"--gate-qa: no such file {', '.join(missing)}")
    from training.registry import parse_held_out

    others = parse_held_out(held_out or ())
    with _training_log():
        res = run(cfg, acfg, gate_qa=list(gate_qa or ()), held_out=others, promote=promote)
    typer.echo(json.dumps({"model_id": res.model_id, "promoted": res.promoted, **res.report}, indent=2, default=str))


@train_app.command("jobs")
def jobs_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Training jobs, newest first (status, progress, loss, log)."""
    from training.registry import TrainingStore

    with TrainingStore.open(load(ctx).db_path) as store:
        rows = store.list_jobs()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        typer.echo(
            f"{r['id']}  {r['method']}  {r['status']:<11} {r['step']}/{r['total_steps']}  loss {loss}  {r['log_path']}"
        )


def export_cmd(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a registered adapter id (tether models list) or an adapter folder"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="folder receiving merged/ (its ONNX graph in merged/onnx/), bnb4/, onnx-int8/"
    ),
    formats: str = typer.Option("merged,onnx,onnx-int8", "--formats", help="merged, bnb4, onnx, onnx-int8"),
    base: str | None = typer.Option(
        None, "--base", help="base model when MODEL is a folder (default: assistant.model)"
    ),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="check greedy outputs against the adapter model"),
    admin_password: str | None = ADMIN,
) -> None:
    """Merge an adapter into its base and export it (safetensors, 4-bit, ONNX, int8 ONNX) with a parity check."""
    from assistant.models import resolve_model
    from training.export import export
    from training.registry import TrainingStore

    cfg = load(ctx)
    _admin(cfg, admin_password)
    parent_id = None
    if Path(model).is_dir():
        adapter, base_path = Path(model), resolve_model(base or cfg.assistant.model, cfg.models_dir)
    else:
        with TrainingStore.open(cfg.db_path) as store:
            rec = store.get_model(model)
        if rec.kind != "adapter":
            raise TetherError(f"{model} is a {rec.kind} export; export starts from an adapter")
        adapter, base_path, parent_id = Path(rec.path), Path(rec.base), rec.id
    res = export(
        base_path,
        adapter,
        out,
        formats=[f.strip() for f in formats.split(",") if f.strip()],
        parity=parity,
        db_path=cfg.db_path,
        parent_id=parent_id,
    )
    for fmt, path in res.paths.items():
        p = (res.parity or {}).get("variants", {}).get(fmt)
        verdict = (
            ""
            if p is None
            else f"  parity {'ok' if p['passed'] else 'FAILED'} ({p['criterion']}; exact {p['exact_prompts']}/{res.parity['prompts']}, teacher-forced {p['teacher_forced_agreement']})"
        )
        typer.echo(f"{fmt:<10} {path}  id {res.model_ids.get(fmt, '-')}{verdict}")
    if res.parity is not None and not res.parity["passed"]:
        raise typer.Exit(1)


def models_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered models (adapters and exports), newest first; * marks the one the engine serves."""
    from training.registry import TrainingStore

    with TrainingStore.open(load(ctx).db_path) as store:
        rows = store.list_models()
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2, default=str))
        return
    if not rows:
        typer.echo("no registered models (the configured assistant.model is served)")
    for r in rows:
        typer.echo(
            f"{'*' if r.promoted else ' '} {r.id}  {r.kind:<9} {r.method or '-':<4} parent {r.parent_id or '-'}  {r.path}  "
            f"evals {len(r.eval_runs)}  {r.created_at}"
        )
        if r.gate:
            typer.echo(f"    gate {_gate_line(r.gate)}")


def _gate_line(gate: dict) -> str:
    """One line of a promotion's gate: verdict, then each metric as candidate vs baseline."""
    parts = []
    for row in gate.get("rows") or ():
        cand, base = row.get("candidate"), row.get("baseline")
        if cand is None:
            continue
        vs = f" vs {base:.3f}" if isinstance(base, int | float) else ""
        parts.append(f"{row['metric'].split('.', 1)[-1]} {cand:.3f}{vs}{' REGRESSED' if row.get('regressed') else ''}")
    verdict = "passed" if gate.get("passed") else "FAILED (forced)"
    return f"{verdict}: " + ", ".join(parts) if parts else f"{verdict}: {gate.get('reason', '')}"


def models_promote(
    ctx: typer.Context,
    model_id: str = typer.Argument(..., help="registered model id"),
    suite: Path = typer.Option(..., "--suite", "-s", help="evaluation cases (JSONL file or folder) for the gate"),
    force: bool = typer.Option(False, "--force", help="promote even when the gate finds a regression"),
    metrics: str | None = typer.Option(None, "--metrics", help="comma-separated gate metrics (default: the gate's)"),
    tolerance: float = typer.Option(0.02, "--tolerance"),
    baseline_run: str | None = typer.Option(None, "--baseline-run", help="reuse this eval run as the baseline"),
    held_out: list[str] | None = typer.Option(
        None,
        "--held-out",
        help="DATA_DIR:SUITE: also gate on SUITE answered over DATA_DIR's collection, a corpus the model was "
        "not trained on (repeatable)",
    ),
    admin_password: str | None = ADMIN,
) -> None:
    """Evaluate MODEL against the served model; promote it unless the gate finds a regression."""
    from training.registry import PromotionRefused, parse_held_out, promote

    cfg = load(ctx)
    _admin(cfg, admin_password)
    others = parse_held_out(held_out or ())
    try:
        res = promote(
            cfg,
            model_id,
            suite,
            force=force,
            metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
            tolerance=tolerance,
            baseline_run=baseline_run,
            held_out=others,
        )
    except PromotionRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        for row in exc.gate.rows if exc.gate is not None else ():
            typer.echo(
                f"  {'REGRESSED' if row.regressed else 'ok':<9} {row.metric}: {row.candidate} vs {row.baseline}",
                err=True,
            )
        raise typer.Exit(1) from None
    typer.echo(
        f"promoted {res['model_id']} (previous {res['previous_id'] or 'default'}; {'FORCED past ' if res['forced'] else ''}gate: {res['gate']['reason']})"
    )


def models_add(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)"),
    base: str | None = typer.Option(
        None, "--base", help="the model it was trained on (default: its run.yaml's, else smollm2)"
    ),
    serve_recorded: bool = typer.Option(
        False,
        "--serve-recorded",
        help="serve it on the gate its run.yaml records (a `tether train adapt` run that passed), when nothing was "
        "ever promoted here; otherwise gate it with `tether models promote ID --suite ...`",
    ),
    admin_password: str | None = ADMIN,
) -> None:
    """Register an adapter trained elsewhere (another machine, a GPU box) so it can be gated and served."""
    from training.registry import add_adapter, adopt_recorded, recorded_gate

    cfg = load(ctx)
    _admin(cfg, admin_password)
    model_id, added = add_adapter(cfg, folder, base=base)
    typer.echo(f"{'registered' if added else 'already registered'} {model_id}  {folder}")
    if serve_recorded:
        gate = recorded_gate(folder)
        if gate is None:
            raise TetherError(
                f"{folder} records no passed gate (run.yaml report.gate): gate it with "
                f"`tether models promote {model_id} --suite CASES` instead"
            )
        if adopt_recorded(cfg, model_id, gate):
            typer.echo(f"serving {model_id} (gate recorded when it was trained: {_gate_line(gate)})")
        else:
            typer.echo("not served: a model was promoted (or rolled back) here before; `tether models promote` decides")


def models_rollback(ctx: typer.Context, admin_password: str | None = ADMIN) -> None:
    """Undo the latest promotion: the previously promoted model (or the configured default) is served again."""
    from training.registry import rollback

    cfg = load(ctx)
    _admin(cfg, admin_password)
    now = rollback(cfg)
    typer.echo(f"serving {now or 'the configured assistant.model'}")


def models_set_admin_password(
    ctx: typer.Context,
    password: str = typer.Option(..., "--password", prompt=True, hide_input=True, confirmation_prompt=True),
    admin_password: str | None = ADMIN,
) -> None:
    """Set (or change) the admin password; changing one needs the current password."""
    from training.admin import set_admin_password

    cfg = load(ctx)
    _admin(cfg, admin_password)
    typer.echo(f"admin password hash written to {set_admin_password(cfg.data_dir, password)}")


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``train`` (group), ``export`` and ``models list|promote|add|rollback|set-admin-password`` to the CLI."""
    app.add_typer(train_app, name="train")
    app.command("export")(export_cmd)
    models_app.command("list")(models_list)
    models_app.command("promote")(models_promote)
    models_app.command("add")(models_add)
    models_app.command("rollback")(models_rollback)
    models_app.command("set-admin-password")(models_set_admin_password)
