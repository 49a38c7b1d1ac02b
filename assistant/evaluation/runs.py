"""Evaluation runs as data: stored in ``tether.db`` (tables eval_runs, eval_metrics, eval_items,
migration m003_evaluation) with the full config, the generator identity, the corpus hash and the
git commit, and read back as ``RunSummary`` values."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tether.db import connect, transaction
from tether.errors import TetherError


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    created_at: str
    suite: str  # the suite file or folder
    label: str | None
    generator: dict  # GeneratorIdentity as a dict (backend, model, adapter, adapter_hash, decoding)
    metrics: dict[str, float]  # flat names: "retrieval.recall@5", "answers.f1", "latency.total.p95", ...
    corpus_hash: str
    git_commit: str | None
    config: dict  # the resolved TetherConfig
    n_items: int
    details: dict = field(default_factory=dict)  # counts, suites run, fallback, misclassified cases...

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalItem:
    """One case's outcome, as stored in eval_items."""

    case_id: str
    kind: str  # qa | conflict | counterfactual
    gold: dict
    metrics: dict
    question: str | None = None
    prediction: str | None = None
    refused: bool | None = None
    correct: bool | None = None
    retrieved: list | None = None
    citations: list | None = None
    groundedness: float | None = None
    latency_ms: dict | None = None
    error: str | None = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def config_dict(cfg) -> dict[str, Any]:
    """The resolved configuration as JSON-ready data."""
    raw = dataclasses.asdict(cfg)
    return json.loads(json.dumps(raw, default=str))


def corpus_hash(db_path: str | Path, collection: str) -> str:
    """sha256 over the sorted (source, content_hash) pairs of a collection's ledger; first 16 hex."""
    db = connect(db_path)
    try:
        rows = db.execute("SELECT source, content_hash FROM documents WHERE collection = ? ORDER BY source", (collection,)).fetchall()
    finally:
        db.close()
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['source']}\t{r['content_hash']}\n".encode())
    return h.hexdigest()[:16]


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD of the repository holding ``path`` (default: this package), with "+dirty" when the
    tracked files differ from it; None outside a git checkout."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=20)
        return sha.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def store_run(
    db_path: str | Path,
    *,
    suite: str,
    suite_hash: str,
    label: str | None,
    suites: Sequence[str],
    collection: str | None,
    generator: dict,
    config: dict,
    corpus_hash: str,
    git_commit: str | None,
    metrics: dict[str, float],
    details: dict,
    items: Sequence[EvalItem],
) -> RunSummary:
    """Write one run and its items in one transaction; return its summary."""
    run_id = uuid.uuid4().hex
    created = _now()
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}
    db = connect(db_path)
    try:
        with transaction(db):
            db.execute(
                "INSERT INTO eval_runs (id, created_at, suite, suite_hash, label, suites, collection, generator, model, adapter,"
                " adapter_hash, decoding, generator_json, config_json, corpus_hash, git_commit, n_items, metrics_json, details_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, created, suite, suite_hash, label, json.dumps(list(suites)), collection,
                    generator.get("backend", ""), generator.get("model", ""), generator.get("adapter"), generator.get("adapter_hash"),
                    generator.get("decoding", ""), json.dumps(generator), json.dumps(config), corpus_hash, git_commit, len(items),
                    json.dumps(metrics, sort_keys=True), json.dumps(details, default=str),
                ),
            )
            db.executemany("INSERT INTO eval_metrics (run_id, name, value) VALUES (?, ?, ?)", [(run_id, k, v) for k, v in metrics.items()])
            db.executemany(
                "INSERT INTO eval_items (run_id, idx, case_id, kind, question, prediction, refused, correct, gold_json, retrieved_json,"
                " citations_json, groundedness, latency_json, metrics_json, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id, i, it.case_id, it.kind, it.question, it.prediction,
                        None if it.refused is None else int(it.refused), None if it.correct is None else int(it.correct),
                        json.dumps(it.gold), _json_or_none(it.retrieved), _json_or_none(it.citations), it.groundedness,
                        _json_or_none(it.latency_ms), json.dumps(it.metrics), it.error,
                    )
                    for i, it in enumerate(items)
                ],
            )
    finally:
        db.close()
    return RunSummary(run_id, created, suite, label, generator, metrics, corpus_hash, git_commit, config, len(items), details)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _summary(row) -> RunSummary:
    return RunSummary(
        run_id=row["id"], created_at=row["created_at"], suite=row["suite"], label=row["label"],
        generator=json.loads(row["generator_json"]), metrics=json.loads(row["metrics_json"]), corpus_hash=row["corpus_hash"],
        git_commit=row["git_commit"], config=json.loads(row["config_json"]), n_items=row["n_items"],
        details=json.loads(row["details_json"]),
    )


def load_run(db_path: str | Path, run_id: str) -> RunSummary:
    """A stored run by id, unique id prefix (at least 4 characters), or label (the latest run with it).

    Raises ``TetherError`` naming ``tether eval list`` when nothing (or more than one run) matches.
    """
    db = connect(db_path)
    try:
        row = db.execute("SELECT * FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None and len(run_id) >= 4:
            rows = db.execute("SELECT * FROM eval_runs WHERE id LIKE ? ORDER BY created_at", (run_id + "%",)).fetchall()
            if len(rows) > 1:
                raise TetherError(f"run id prefix {run_id!r} matches {len(rows)} runs: give more characters (tether eval list)")
            row = rows[0] if rows else None
        if row is None:
            row = db.execute("SELECT * FROM eval_runs WHERE label = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (run_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        raise TetherError(f"no evaluation run {run_id!r} in {db_path}: `tether eval list` shows the stored runs")
    return _summary(row)


def list_runs(db_path: str | Path, *, suite: str | None = None, label: str | None = None, limit: int | None = None) -> list[RunSummary]:
    """Stored runs, newest first, optionally only those of one suite path or label."""
    sql, args = "SELECT * FROM eval_runs WHERE 1 = 1", []
    if suite:
        sql += " AND suite = ?"
        args.append(suite)
    if label:
        sql += " AND label = ?"
        args.append(label)
    sql += " ORDER BY created_at DESC, rowid DESC"
    if limit:
        sql += " LIMIT ?"
        args.append(int(limit))
    db = connect(db_path)
    try:
        return [_summary(r) for r in db.execute(sql, args).fetchall()]
    finally:
        db.close()


def load_items(db_path: str | Path, run_id: str) -> list[EvalItem]:
    """The items of a run, in case order."""
    db = connect(db_path)
    try:
        rows = db.execute("SELECT * FROM eval_items WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
    finally:
        db.close()
    loads = lambda v: None if v is None else json.loads(v)  # noqa: E731
    return [
        EvalItem(
            case_id=r["case_id"], kind=r["kind"], gold=json.loads(r["gold_json"]), metrics=json.loads(r["metrics_json"]),
            question=r["question"], prediction=r["prediction"], refused=None if r["refused"] is None else bool(r["refused"]),
            correct=None if r["correct"] is None else bool(r["correct"]), retrieved=loads(r["retrieved_json"]),
            citations=loads(r["citations_json"]), groundedness=r["groundedness"], latency_ms=loads(r["latency_json"]), error=r["error"],
        )
        for r in rows
    ]


def metric_history(db_path: str | Path, name: str, *, suite: str | None = None) -> list[tuple[str, str, float]]:
    """(run_id, created_at, value) of one metric over all stored runs, oldest first (for charts)."""
    sql = "SELECT r.id, r.created_at, m.value FROM eval_metrics m JOIN eval_runs r ON r.id = m.run_id WHERE m.name = ?"
    args: list[Any] = [name]
    if suite:
        sql += " AND r.suite = ?"
        args.append(suite)
    db = connect(db_path)
    try:
        return [(r[0], r[1], float(r[2])) for r in db.execute(sql + " ORDER BY r.created_at", args).fetchall()]
    finally:
        db.close()
