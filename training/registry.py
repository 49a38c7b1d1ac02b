"""The model registry (``tether models list|promote|rollback``) in ``tether.db``.

Every trained adapter and every export is a row of ``models`` with its config, dataset manifest,
base, parent and linked eval runs (``model_eval_runs``). ``promote`` runs the evaluation gate
(``assistant.evaluation``: ``run_suite`` on the candidate and on the model served now, then ``gate``)
and refuses a regression unless forced; each promotion is a row of ``promotions``. The served model
is the newest promotion not rolled back; ``rollback`` marks it rolled back, so the one before it
(or, with none, the configured default) is served again.

The engine is handed a ``RegistryModelSource`` (``promoted_model(cfg)``) by its callers and asks it
what to load; it never imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.clock import now_iso
from tether.db import connect, transaction
from tether.errors import ConfigError, TetherError
from training import jobs

log = logging.getLogger(__name__)

SERVABLE = ("adapter", "merged", "bnb4")  # kinds the hf generator loads


class PromotionRefused(TetherError):
    """The gate found a regression; ``gate`` holds the GateResult."""

    def __init__(self, message: str, gate: Any = None):
        self.gate = gate
        super().__init__(message)


@dataclass(frozen=True)
class ModelRecord:
    id: str
    kind: str
    path: str
    base: str
    adapter: str | None
    parent_id: str | None
    method: str | None
    dataset_id: str | None
    created_at: str
    config: dict
    promoted: bool = False
    eval_runs: tuple[str, ...] = ()
    gate: dict | None = None  # the gate of its latest promotion ({"passed", "reason", "rows"}), if ever promoted

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _new_id(kind: str, path: str) -> str:
    import uuid

    return f"{kind}-{hashlib.sha256(f'{path}:{now_iso()}:{uuid.uuid4()}'.encode()).hexdigest()[:10]}"


def record_dataset(db: sqlite3.Connection, manifest) -> str:
    """Store a dataset manifest (``training.data.DatasetManifest``); idempotent by id."""
    with transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO datasets (id, kind, path, hash, n_train, n_eval, manifest_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest.id,
                manifest.kind,
                manifest.path,
                manifest.hash,
                manifest.n_train,
                manifest.n_eval,
                json.dumps(manifest.to_json()),
                manifest.created_at or now_iso(),
            ),
        )
    return manifest.id


def register(
    db: sqlite3.Connection,
    *,
    kind: str,
    path: str | Path,
    base: str,
    adapter: str | None = None,
    parent_id: str | None = None,
    method: str | None = None,
    config: dict | None = None,
    manifest: dict | None = None,
    job_id: str | None = None,
    notes: str | None = None,
) -> str:
    """Add a model row; returns its id."""
    model_id = _new_id(kind, str(path))
    dataset_id = manifest.get("id") if manifest else None
    with transaction(db):
        if dataset_id and not db.execute("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)).fetchone():
            dataset_id = None
        db.execute(
            "INSERT INTO models (id, kind, path, base, adapter, parent_id, method, dataset_id, job_id, config_json, manifest_json, notes, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model_id,
                kind,
                str(path),
                base,
                adapter,
                parent_id,
                method,
                dataset_id,
                job_id,
                json.dumps(config or {}, default=str),
                json.dumps(manifest) if manifest else None,
                notes,
                now_iso(),
            ),
        )
    return model_id


def register_adapter(
    db: sqlite3.Connection,
    adapter_dir: Path,
    *,
    base: str,
    method: str,
    config: dict,
    manifest: dict | None,
    parent_adapter: str | None = None,
    job_id: str | None = None,
) -> str:
    """Register a trained adapter; its parent is the registered model whose path is ``parent_adapter``."""
    parent_id = None
    if parent_adapter:
        row = db.execute(
            "SELECT id FROM models WHERE path IN (?, ?) ORDER BY created_at DESC",
            (str(parent_adapter), str(Path(parent_adapter).resolve())),
        ).fetchone()
        parent_id = row["id"] if row else None
    return register(
        db,
        kind="adapter",
        path=str(Path(adapter_dir).resolve()),
        base=base,
        adapter=str(Path(adapter_dir).resolve()),
        parent_id=parent_id,
        method=method,
        config=config,
        manifest=manifest,
        job_id=job_id,
    )


def link_eval_run(db: sqlite3.Connection, model_id: str, run_id: str, role: str) -> None:
    with transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO model_eval_runs (model_id, run_id, role) VALUES (?, ?, ?)", (model_id, run_id, role)
        )


def find_adapter(db: sqlite3.Connection, path: str | Path, digest: str) -> str | None:
    """The id of the adapter registered at ``path`` with weights hashing to ``digest`` (``add_adapter``), or None."""
    for row in db.execute(
        "SELECT id, manifest_json FROM models WHERE kind = 'adapter' AND path = ? ORDER BY created_at", (str(path),)
    ):
        if json.loads(row["manifest_json"] or "{}").get("adapter_hash") == digest:
            return row["id"]
    return None


def ever_promoted(db: sqlite3.Connection) -> bool:
    """Whether any promotion (rolled back or not) was ever recorded."""
    return db.execute("SELECT 1 FROM promotions LIMIT 1").fetchone() is not None


def _served_id(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT model_id FROM promotions WHERE rolled_back_at IS NULL ORDER BY id DESC LIMIT 1").fetchone()
    return row["model_id"] if row else None


def get_model(db: sqlite3.Connection, model_id: str) -> ModelRecord:
    row = db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
    if row is None:
        known = [r["id"] for r in db.execute("SELECT id FROM models ORDER BY created_at DESC LIMIT 5")]
        raise TetherError(
            f"no registered model {model_id!r}; `tether models list` shows them (latest: {', '.join(known) or 'none'})"
        )
    return _record(db, row, _served_id(db))


def _record(db: sqlite3.Connection, row: sqlite3.Row, served: str | None) -> ModelRecord:
    runs = tuple(
        r["run_id"]
        for r in db.execute("SELECT run_id FROM model_eval_runs WHERE model_id = ? ORDER BY rowid", (row["id"],))
    )
    promotion = db.execute(
        "SELECT gate_json FROM promotions WHERE model_id = ? ORDER BY id DESC LIMIT 1", (row["id"],)
    ).fetchone()
    return ModelRecord(
        row["id"],
        row["kind"],
        row["path"],
        row["base"],
        row["adapter"],
        row["parent_id"],
        row["method"],
        row["dataset_id"],
        row["created_at"],
        json.loads(row["config_json"]),
        row["id"] == served,
        runs,
        json.loads(promotion["gate_json"]) if promotion and promotion["gate_json"] else None,
    )


def list_models(db: sqlite3.Connection) -> list[ModelRecord]:
    served = _served_id(db)
    return [_record(db, r, served) for r in db.execute("SELECT * FROM models ORDER BY created_at DESC, rowid DESC")]


def record_promotion(
    db: sqlite3.Connection, model_id: str, previous_id: str | None, *, forced: bool, gate: dict | None, user: str | None
) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO promotions (model_id, previous_id, forced, gate_json, user, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (model_id, previous_id, int(forced), json.dumps(gate), user, now_iso()),
        )


def rollback_latest(db: sqlite3.Connection) -> str:
    """Mark the newest promotion not rolled back as rolled back; return its model id.

    Raises:
        TetherError: nothing is promoted.
    """
    with transaction(db):
        row = db.execute(
            "SELECT id, model_id FROM promotions WHERE rolled_back_at IS NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise TetherError("nothing to roll back: no model is promoted (the configured assistant.model is served)")
        db.execute("UPDATE promotions SET rolled_back_at = ? WHERE id = ?", (now_iso(), row["id"]))
    return row["model_id"]


@dataclass(frozen=True)
class AdminLockout:
    """One admin account's failed sign-ins (``admin_lockouts``): how many in the current window,
    when the last one was, and until when sign-in is refused (Unix seconds; 0 = not locked)."""

    user: str
    failures: int
    last_failure_at: float
    locked_until: float


def _lockout(row: sqlite3.Row | None) -> AdminLockout | None:
    return AdminLockout(row["user"], row["failures"], row["last_failure_at"], row["locked_until"]) if row else None


def admin_lockout(db: sqlite3.Connection, user: str) -> AdminLockout | None:
    return _lockout(db.execute("SELECT * FROM admin_lockouts WHERE user = ?", (user,)).fetchone())


def update_admin_lockout(
    db: sqlite3.Connection, user: str, change: Callable[[AdminLockout | None], AdminLockout | None]
) -> AdminLockout | None:
    """Read, change and write one account's lockout row in one write transaction, so concurrent
    sign-ins (CLI and app, several sessions) count every attempt. ``change`` returns the new row
    (None deletes it); an exception from it rolls back and propagates."""
    with transaction(db):
        new = change(admin_lockout(db, user))
        if new is None:
            db.execute("DELETE FROM admin_lockouts WHERE user = ?", (user,))
        else:
            db.execute(
                "INSERT INTO admin_lockouts (user, failures, last_failure_at, locked_until) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET failures = excluded.failures, "
                "last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until",
                (user, new.failures, new.last_failure_at, new.locked_until),
            )
    return new


class TrainingStore:
    """The training package's store: datasets, training_jobs (``training.jobs``), models,
    model_eval_runs, promotions and admin_lockouts over one connection to ``tether.db``. Open it per use and close
    it: ``with TrainingStore.open(cfg.db_path) as store: store.list_models()``."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    @classmethod
    def open(cls, path: str | Path) -> TrainingStore:
        return cls(connect(path))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrainingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- datasets and models --------------------------------------------------------------------

    def record_dataset(self, manifest) -> str:
        return record_dataset(self.db, manifest)

    def register(self, **fields) -> str:
        """``register``: kind, path, base and the optional adapter, parent_id, method, config, manifest, job_id, notes."""
        return register(self.db, **fields)

    def register_adapter(self, adapter_dir: Path, **fields) -> str:
        return register_adapter(self.db, adapter_dir, **fields)

    def link_eval_run(self, model_id: str, run_id: str, role: str) -> None:
        link_eval_run(self.db, model_id, run_id, role)

    def get_model(self, model_id: str) -> ModelRecord:
        return get_model(self.db, model_id)

    def list_models(self) -> list[ModelRecord]:
        return list_models(self.db)

    # -- promotions -----------------------------------------------------------------------------

    def served_id(self) -> str | None:
        """The id of the promoted model (None: the configured default is served)."""
        return _served_id(self.db)

    def record_promotion(
        self, model_id: str, previous_id: str | None, *, forced: bool, gate: dict | None, user: str | None
    ) -> None:
        record_promotion(self.db, model_id, previous_id, forced=forced, gate=gate, user=user)

    def find_adapter(self, path: str | Path, digest: str) -> str | None:
        return find_adapter(self.db, path, digest)

    def ever_promoted(self) -> bool:
        return ever_promoted(self.db)

    def rollback_latest(self) -> str:
        return rollback_latest(self.db)

    # -- admin sign-in lockout (training/admin.py) ------------------------------------------------

    def admin_lockout(self, user: str) -> AdminLockout | None:
        return admin_lockout(self.db, user)

    def update_admin_lockout(
        self, user: str, change: Callable[[AdminLockout | None], AdminLockout | None]
    ) -> AdminLockout | None:
        return update_admin_lockout(self.db, user, change)

    # -- training jobs --------------------------------------------------------------------------

    def start_job(
        self,
        method: str,
        config: dict[str, Any],
        output_dir: str,
        log_path: str,
        total_steps: int,
        *,
        job_id: str | None = None,
        pid: int | None = None,
    ) -> str:
        return jobs.start_job(self.db, method, config, output_dir, log_path, total_steps, job_id=job_id, pid=pid)

    def update_job(self, job_id: str, *, step: int, loss: float | None, total_steps: int | None = None) -> None:
        jobs.update_job(self.db, job_id, step=step, loss=loss, total_steps=total_steps)

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        model_id: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        jobs.finish_job(self.db, job_id, status, error=error, model_id=model_id, result=result)

    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return jobs.list_jobs(self.db, limit)

    # -- trained cross-encoders (tether train detector | reranker) -------------------------------

    def register_detector(self, **fields) -> str:
        return register_cross_encoder(self.db, "detector", **fields)

    def record_detector_gate(self, detector_id: str, gate: dict[str, Any]) -> None:
        record_cross_encoder_gate(self.db, "detector", detector_id, gate)

    def promote_detector(self, detector_id: str) -> None:
        promote_cross_encoder(self.db, "detector", detector_id)

    def list_detectors(self) -> list[CrossEncoderRecord]:
        return list_cross_encoders(self.db, "detector")

    def promoted_detector(self) -> CrossEncoderRecord | None:
        return promoted_cross_encoder(self.db, "detector")

    def register_reranker(self, *, collection: str, **fields) -> str:
        return register_cross_encoder(self.db, "reranker", collection=collection, **fields)

    def record_reranker_gate(self, reranker_id: str, gate: dict[str, Any]) -> None:
        record_cross_encoder_gate(self.db, "reranker", reranker_id, gate)

    def promote_reranker(self, reranker_id: str) -> None:
        promote_cross_encoder(self.db, "reranker", reranker_id)

    def retire_reranker(self, reranker_id: str) -> None:
        retire_cross_encoder(self.db, "reranker", reranker_id)

    def list_rerankers(self, collection: str | None = None) -> list[CrossEncoderRecord]:
        return list_cross_encoders(self.db, "reranker", collection)

    def promoted_reranker(self, collection: str) -> CrossEncoderRecord | None:
        return promoted_cross_encoder(self.db, "reranker", collection)


def serving_paths(rec: ModelRecord) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) that the hf generator loads for a registered model."""
    if rec.kind == "adapter":
        return Path(rec.base), Path(rec.path)
    if rec.kind in ("merged", "bnb4"):
        return Path(rec.path), None
    raise TetherError(
        f"model {rec.id} is an {rec.kind} export: the engine serves adapters, merged or bnb4 models; promote one of those"
    )


def promoted_model(cfg: Any) -> tuple[Path, Path | None] | None:
    """What the engine should serve: (model folder, adapter or None) of the promoted model, or None
    when nothing is promoted (serve the configured ``assistant.model``) or the files are gone."""
    if not Path(cfg.db_path).is_file():
        return None
    with TrainingStore.open(cfg.db_path) as store:
        served = store.served_id()
        if served is None:
            return None
        model, adapter = serving_paths(store.get_model(served))
    if not (model / "config.json").is_file() or (
        adapter is not None and not (adapter / "adapter_config.json").is_file()
    ):
        log.warning(
            "the promoted model %s is missing on disk (%s); serving the configured model", served, adapter or model
        )
        return None
    return model, adapter


class RegistryModelSource:
    """The engine's ``ModelSource`` (assistant/engine.py) over this registry: the promoted model of
    ``cfg``'s database. The CLI root (app/cli.py) and the web app pass one to ``ChatEngine``."""

    def promoted(self, cfg: Any) -> tuple[Path, Path | None] | None:
        return promoted_model(cfg)

    def promoted_detector(self, cfg: Any) -> Path | None:
        """The promoted contradiction classifier's folder (``tether train detector``), or None."""
        return promoted_detector_path(cfg)

    def promoted_reranker(self, cfg: Any) -> Path | None:
        """The folder of the reranker promoted for ``cfg``'s collection (``tether train reranker``), or None."""
        return promoted_reranker_path(cfg)


def config_for(cfg: Any, rec: ModelRecord | None) -> Any:
    """``cfg`` answering with ``rec`` (None = the configured default) through the hf generator."""
    if rec is None:
        return cfg
    model, adapter = serving_paths(rec)
    return cfg.with_assistant(
        generator="hf", model=str(model), adapter=str(adapter) if adapter else None, fallback_to_extractive=False
    )


def _evaluation():
    """``run_suite`` and ``gate`` from assistant.evaluation."""
    try:
        from assistant.evaluation.gate import gate
        from assistant.evaluation.suites import run_suite
    except ImportError as exc:
        raise TetherError(f"promotion needs the evaluation gate (assistant.evaluation): {exc}") from exc
    return run_suite, gate


def promote(
    cfg: Any,
    model_id: str,
    suite: str | Path,
    *,
    force: bool = False,
    metrics: Sequence[str] | None = None,
    tolerance: float = 0.02,
    user: str | None = None,
    baseline_run: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    held_out: Sequence[tuple[Path, Path]] = (),
) -> dict[str, Any]:
    """Evaluate ``model_id`` and the model served now on ``suite``, gate, and promote on a pass (or ``force``).

    ``baseline_run``: an eval run id to use as the baseline instead of running the served model again.
    ``progress(done, total)``: the evaluation runs' progress as one (the app's promotion job).
    ``held_out``: (data dir, suite) pairs of corpora the model was not trained on: both models answer
    each suite over that data dir's collection (``held_out_config``; the runs are stored there), and
    each of these gates must pass too. A gate on the training corpus's own questions cannot tell
    whether a fine-tuned model generalizes; one on another corpus can.
    Returns {"model_id", "previous_id", "forced", "gate": {... "held_out": [...]}, "candidate_run", "baseline_run"}.

    Raises:
        PromotionRefused: a gate failed and ``force`` is False.
    """
    run_suite, gate = _evaluation()
    with TrainingStore.open(cfg.db_path) as store:
        rec = store.get_model(model_id)
        serving_paths(rec)  # refuses exports the engine cannot serve
        previous = store.served_id()
        prev_rec = store.get_model(previous) if previous else None
    if previous == model_id:
        raise TetherError(f"{model_id} is already the promoted model")
    own_runs = 1 if baseline_run else 2
    runs = own_runs + 2 * len(held_out)

    def phase(i: int):
        if progress is None:
            return None
        return lambda done, total: progress(i * total + done, runs * total)

    cand = run_suite(config_for(cfg, rec), Path(suite), label=f"candidate:{model_id}", progress=phase(0))
    if baseline_run:
        from assistant.evaluation.runs import load_run

        base = load_run(cfg.db_path, baseline_run)
    else:
        base = run_suite(
            config_for(cfg, prev_rec), Path(suite), label=f"baseline:{previous or 'default'}", progress=phase(1)
        )
    kwargs: dict[str, Any] = {"tolerance": tolerance}
    if metrics:
        kwargs["metrics"] = list(metrics)
    result = gate(cand, base, **kwargs)
    gate_json = _gate_json(result)
    failed = (
        None
        if result.passed
        else (result, f"{result.reason} (candidate run {cand.run_id} vs baseline run {base.run_id})")
    )
    held: list[dict[str, Any]] = []
    for n, (data_dir, held_suite) in enumerate(held_out):
        hcfg = held_out_config(cfg, Path(data_dir))
        i = own_runs + 2 * n
        hc = run_suite(
            config_for(hcfg, rec), Path(held_suite), label=f"held-out candidate:{model_id}", progress=phase(i)
        )
        hb = run_suite(
            config_for(hcfg, prev_rec),
            Path(held_suite),
            label=f"held-out baseline:{previous or 'default'}",
            progress=phase(i + 1),
        )
        hres = gate(hc, hb, **kwargs)
        held.append(
            {
                "data_dir": str(data_dir),
                "suite": str(held_suite),
                "candidate_run": hc.run_id,
                "baseline_run": hb.run_id,
                **_gate_json(hres),
            }
        )
        if not hres.passed and failed is None:
            failed = (hres, f"on the held-out corpus {data_dir} ({held_suite}): {hres.reason}")
    if held:
        gate_json["held_out"] = held
        gate_json["passed"] = failed is None
    passed = failed is None
    with TrainingStore.open(cfg.db_path) as store:
        store.link_eval_run(model_id, cand.run_id, "candidate")
        if previous:
            store.link_eval_run(previous, base.run_id, "baseline")
        if not passed and not force:
            raise PromotionRefused(
                f"promotion of {model_id} refused by the evaluation gate: {failed[1]}; `--force` promotes anyway",
                failed[0],
            )
        store.record_promotion(model_id, previous, forced=force and not passed, gate=gate_json, user=user)
    log.info("promoted %s (previous %s, gate %s)", model_id, previous, "passed" if passed else "FAILED, forced")
    return {
        "model_id": model_id,
        "previous_id": previous,
        "forced": bool(force and not passed),
        "gate": gate_json,
        "candidate_run": cand.run_id,
        "baseline_run": base.run_id,
    }


def parse_held_out(values: Sequence[str]) -> list[tuple[Path, Path]]:
    """``DATA_DIR:FILE`` values (``--held-out``, the Admin page) as (data dir, file) pairs, both checked.

    Raises:
        ConfigError: every malformed value, data dir without a database, or missing file, at once.
    """
    out, problems = [], []
    for value in values:
        data_dir, sep, suite = value.strip().partition(":")
        if not sep or not data_dir or not suite:
            problems.append(f"held-out {value!r}: give DATA_DIR:FILE")
        elif not (Path(data_dir) / "tether.db").is_file():
            problems.append(f"held-out {value!r}: {data_dir} holds no tether.db (ingest the corpus there first)")
        elif not Path(suite).is_file():
            problems.append(f"held-out {value!r}: no such file {suite}")
        else:
            out.append((Path(data_dir), Path(suite)))
    if problems:
        raise ConfigError(problems)
    return out


def held_out_config(cfg: Any, data_dir: Path) -> Any:
    """The configuration that answers over ``data_dir``'s collection (its own retrieval settings,
    which its index was built with) with ``cfg``'s answering sections (assistant, extractive, hf),
    the configured model resolved in ``cfg``'s models folder: the same two models, another corpus.

    Raises:
        ConfigError: ``data_dir`` holds no Tether database (nothing was ingested there).
    """
    from dataclasses import replace

    from tether.config import load_config

    if not (Path(data_dir) / "tether.db").is_file():
        raise ConfigError(
            [
                f"held-out data dir {data_dir} holds no tether.db: ingest the held-out corpus there first (`tether --data-dir {data_dir} ingest DOCS`)"
            ]
        )
    assistant = cfg.assistant
    if assistant.generator == "hf":
        from assistant.models import resolve_model

        assistant = replace(assistant, model=str(resolve_model(assistant.model, cfg.models_dir)))
    return replace(load_config(Path(data_dir)), assistant=assistant, extractive=cfg.extractive, hf=cfg.hf)


def _gate_json(result: Any) -> dict[str, Any]:
    if hasattr(result, "to_json"):
        return result.to_json()
    rows = getattr(result, "rows", [])
    out_rows = []
    for r in rows:
        if hasattr(r, "__dataclass_fields__"):
            from dataclasses import asdict

            out_rows.append(asdict(r))
        elif isinstance(r, dict):
            out_rows.append(r)
        else:
            out_rows.append(str(r))
    return {"passed": bool(result.passed), "reason": str(getattr(result, "reason", "")), "rows": out_rows}


def rollback(cfg: Any, *, user: str | None = None) -> str | None:
    """Undo the latest promotion; returns the id served now (None = the configured default).

    Raises:
        TetherError: nothing is promoted.
    """
    with TrainingStore.open(cfg.db_path) as store:
        rolled_back = store.rollback_latest()
        now = store.served_id()
    log.info("rolled back %s; serving %s", rolled_back, now or "the configured default")
    return now


# -- adapters trained elsewhere, and the shipped one ------------------------------------------------


def _run_yaml(folder: Path) -> dict[str, Any]:
    """The ``run.yaml`` that describes an adapter folder: its own, or its run folder's (``runs/sft/``
    holds ``adapter/`` and ``run.yaml`` side by side)."""
    path = next((p for p in (folder / "run.yaml", folder.parent / "run.yaml") if p.is_file()), None)
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TetherError(f"{path} is not valid YAML ({exc}): restore the file the adapter was trained with") from exc
    return data if isinstance(data, dict) else {}


def add_adapter(cfg: Any, folder: str | Path, *, base: str | None = None) -> tuple[str, bool]:
    """Register a PEFT adapter folder trained elsewhere (another machine, a GPU box): (model id,
    whether it was added now). The same weights at the same path are
    registered once. ``base``: the model it was trained on ("smollm2" or a checkpoint folder);
    default: the ``base_model`` its ``run.yaml`` names, else "smollm2".

    Raises:
        TetherError: the folder holds no adapter, or the base model is missing.
    """
    from assistant.generators.hf import ADAPTER_WEIGHTS, adapter_hash
    from assistant.models import resolve_model

    folder = Path(folder).expanduser().resolve()
    if not (folder / "adapter_config.json").is_file() or not any((folder / n).is_file() for n in ADAPTER_WEIGHTS):
        raise TetherError(
            f"{folder} is not a PEFT adapter folder: it needs adapter_config.json and adapter_model.safetensors "
            "(the adapter/ folder a `tether train sft|dpo|kto|adapt` run writes)"
        )
    run = _run_yaml(folder)
    settings = run.get("adapt") or run.get("config") or {}
    base_name = base or settings.get("base_model") or "smollm2"
    base_path = resolve_model(str(base_name), Path(cfg.models_dir)).resolve()
    digest = adapter_hash(folder)  # the hash eval runs record for the adapter they answered with
    with TrainingStore.open(cfg.db_path) as store:
        known = store.find_adapter(folder, digest)
        if known is not None:
            return known, False
        model_id = store.register(
            kind="adapter",
            path=str(folder),
            base=str(base_path),
            adapter=str(folder),
            method="adapt" if "adapt" in run else str(run.get("method") or "sft"),
            config=settings,
            manifest={
                "adapter_hash": digest,
                "source": "added",
                "run": {k: v for k, v in run.items() if k != "adapt"},
            },
            notes=f"added from {folder}",
        )
    log.info("registered the adapter %s as %s (base %s)", folder, model_id, base_path)
    return model_id, True


def recorded_gate(folder: str | Path) -> dict[str, Any] | None:
    """The gate an adapter passed when it was trained (``report.gate`` of the ``run.yaml`` that
    ``tether train adapt`` writes), or None when it records no passed promotion."""
    gate = (_run_yaml(Path(folder)).get("report") or {}).get("gate") or {}
    verdict = gate.get("gate") or {}
    if not gate.get("promoted") or not verdict.get("passed"):
        return None
    return {**verdict, "recorded": True, "suite": gate.get("suite"), "baseline": gate.get("previous_id") or "default"}


def adopt_recorded(cfg: Any, model_id: str, gate: dict[str, Any], *, user: str | None = None) -> bool:
    """Serve ``model_id`` on the strength of the gate it passed when it was trained, but only on a
    registry where nothing was ever promoted (an admin's promotion or rollback is never overridden).
    True when it is served now."""
    with TrainingStore.open(cfg.db_path) as store:
        if store.ever_promoted():
            return store.served_id() == model_id
        store.record_promotion(model_id, None, forced=False, gate=gate, user=user or "shipped")
    log.info("serving %s (gate recorded when it was trained: %s)", model_id, gate.get("reason"))
    return True


# -- trained cross-encoders: contradiction classifiers and rerankers -----------------------------------

CROSS_ENCODER_KINDS = {
    "detector": ("contradiction classifier", "`tether models list --detectors`"),
    "reranker": ("reranker", "`tether train reranker --list`"),
}


@dataclass(frozen=True)
class CrossEncoderRecord:
    """A row of ``cross_encoders``: a CrossEncoder trained by ``tether train detector`` (kind
    ``detector``, any collection: ``collection`` is None) or ``tether train reranker`` (kind
    ``reranker``, trained on and served for one collection)."""

    id: str
    kind: str
    collection: str | None
    path: str
    base: str
    job_id: str | None
    created_at: str
    config: dict
    manifest: dict
    gate: (
        dict | None
    )  # the gate's figures once it ran (detector: rules vs rules + classifier; reranker: search with and without it)
    promoted_at: str | None = None
    retired_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _missing(kind: str, ce_id: str) -> TetherError:
    what, listing = CROSS_ENCODER_KINDS[kind]
    return TetherError(f"no {what} {ce_id!r}: {listing} shows them")


def register_cross_encoder(
    db: sqlite3.Connection,
    kind: str,
    *,
    path: str | Path,
    base: str,
    collection: str | None = None,
    config: dict | None = None,
    manifest: dict | None = None,
    job_id: str | None = None,
) -> str:
    """Add a trained cross-encoder of ``kind`` (not promoted); returns its id."""
    if kind not in CROSS_ENCODER_KINDS:
        raise TetherError(f"unknown cross-encoder kind {kind!r}: one of {', '.join(CROSS_ENCODER_KINDS)}")
    if (kind == "reranker") != (collection is not None):
        raise TetherError("a reranker is registered for its collection; a contradiction classifier for none")
    ce_id = _new_id(kind, str(path))
    with transaction(db):
        db.execute(
            "INSERT INTO cross_encoders (id, kind, collection, path, base, job_id, config_json, manifest_json, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ce_id,
                kind,
                collection,
                str(path),
                base,
                job_id,
                json.dumps(config or {}, default=str),
                json.dumps(manifest or {}, default=str),
                now_iso(),
            ),
        )
    return ce_id


def record_cross_encoder_gate(db: sqlite3.Connection, kind: str, ce_id: str, gate: dict[str, Any]) -> None:
    with transaction(db):
        n = db.execute(
            "UPDATE cross_encoders SET gate_json = ? WHERE id = ? AND kind = ?",
            (json.dumps(gate, default=str), ce_id, kind),
        ).rowcount
    if not n:
        raise _missing(kind, ce_id)


def promote_cross_encoder(db: sqlite3.Connection, kind: str, ce_id: str) -> None:
    """Serve ``ce_id``: promote it and retire the one of its kind (and collection) served before."""
    now = now_iso()
    with transaction(db):
        row = db.execute("SELECT collection FROM cross_encoders WHERE id = ? AND kind = ?", (ce_id, kind)).fetchone()
        if row is None:
            raise _missing(kind, ce_id)
        db.execute(
            "UPDATE cross_encoders SET retired_at = ? WHERE kind = ? AND collection IS ? AND promoted_at IS NOT NULL"
            " AND retired_at IS NULL AND id != ?",
            (now, kind, row["collection"], ce_id),
        )
        db.execute("UPDATE cross_encoders SET promoted_at = ?, retired_at = NULL WHERE id = ?", (now, ce_id))


def retire_cross_encoder(db: sqlite3.Connection, kind: str, ce_id: str) -> None:
    """Stop serving ``ce_id`` (search goes back to the fused order; detection to the rules alone)."""
    with transaction(db):
        n = db.execute(
            "UPDATE cross_encoders SET retired_at = ? WHERE id = ? AND kind = ? AND promoted_at IS NOT NULL",
            (now_iso(), ce_id, kind),
        ).rowcount
    if not n:
        raise TetherError(f"{CROSS_ENCODER_KINDS[kind][0]} {ce_id!r} is not promoted: nothing to retire")


def _cross_encoder(row: sqlite3.Row) -> CrossEncoderRecord:
    return CrossEncoderRecord(
        id=row["id"],
        kind=row["kind"],
        collection=row["collection"],
        path=row["path"],
        base=row["base"],
        job_id=row["job_id"],
        created_at=row["created_at"],
        config=json.loads(row["config_json"] or "{}"),
        manifest=json.loads(row["manifest_json"] or "{}"),
        gate=json.loads(row["gate_json"]) if row["gate_json"] else None,
        promoted_at=row["promoted_at"],
        retired_at=row["retired_at"],
    )


def list_cross_encoders(db: sqlite3.Connection, kind: str, collection: str | None = None) -> list[CrossEncoderRecord]:
    """The rows of ``kind``, newest first; of one collection where ``collection`` is given."""
    sql, args = "SELECT * FROM cross_encoders WHERE kind = ?", [kind]
    if collection is not None:
        sql, args = sql + " AND collection = ?", [*args, collection]
    return [_cross_encoder(r) for r in db.execute(sql + " ORDER BY created_at DESC, id", args).fetchall()]


def promoted_cross_encoder(
    db: sqlite3.Connection, kind: str, collection: str | None = None
) -> CrossEncoderRecord | None:
    """The newest promoted row of ``kind`` (and of ``collection``) not retired."""
    row = db.execute(
        "SELECT * FROM cross_encoders WHERE kind = ? AND collection IS ? AND promoted_at IS NOT NULL"
        " AND retired_at IS NULL ORDER BY promoted_at DESC, id DESC LIMIT 1",
        (kind, collection),
    ).fetchone()
    return _cross_encoder(row) if row else None


def promoted_cross_encoder_path(cfg: Any, kind: str) -> Path | None:
    """The folder of the promoted cross-encoder of ``kind`` for ``cfg`` (a reranker: of its
    collection), or None: none promoted, or its files are gone. Reads SQLite; imports nothing heavy."""
    if not Path(cfg.db_path).is_file():
        return None
    collection = cfg.retrieval.collection if kind == "reranker" else None
    try:
        with TrainingStore.open(cfg.db_path) as store:
            rec = promoted_cross_encoder(store.db, kind, collection)
    except sqlite3.DatabaseError as exc:  # the command that needs the database says so; `tether doctor` must run
        log.warning("no promoted %s: %s", CROSS_ENCODER_KINDS[kind][0], exc)
        return None
    if rec is None:
        return None
    path = Path(rec.path)
    if not (path / "config.json").is_file():
        log.warning(
            "the promoted %s %s is missing on disk (%s); going on without it",
            CROSS_ENCODER_KINDS[kind][0],
            rec.id,
            path,
        )
        return None
    return path


def promoted_detector_path(cfg: Any) -> Path | None:
    return promoted_cross_encoder_path(cfg, "detector")


def promoted_reranker_path(cfg: Any) -> Path | None:
    return promoted_cross_encoder_path(cfg, "reranker")
