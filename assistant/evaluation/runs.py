"""Evaluation runs as data: stored in ``tether.db`` (tables eval_runs, eval_metrics, eval_items,
migration m003_evaluation) with the full config, the generator identity, the corpus hash and the
git commit, and read back as ``RunSummary`` values.

Every SQL statement over these tables is in ``RunStore``; the module functions open one per call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.ledger import Ledger
from tether.clock import now_iso
from tether.config import public_dict
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


def config_dict(cfg) -> dict[str, Any]:
    """The resolved configuration as JSON-ready data, secrets (API keys) blanked."""
    return public_dict(cfg)


def corpus_hash(db_path: str | Path, collection: str) -> str:
    """sha256 over the sorted (source, content_hash) pairs of a collection's ledger; first 16 hex."""
    with Ledger.open(db_path) as ledger:
        docs = ledger.documents(collection)  # by source
    h = hashlib.sha256()
    for d in docs:
        h.update(f"{d.source}\t{d.content_hash}\n".encode())
    return h.hexdigest()[:16]


class RunStore:
    """The evaluation runs' store: one connection to ``tether.db``; open it per use and close it
    (``with RunStore.open(path) as runs: ...``)."""

    def __init__(self, db, path: str | Path = ":memory:"):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        return cls(connect(path), path)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def store_run(
        self,
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
        created = now_iso()
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        with transaction(self.db) as db:
            db.execute(
                "INSERT INTO eval_runs (id, created_at, suite, suite_hash, label, suites, collection, generator, model, adapter,"
                " adapter_hash, decoding, generator_json, config_json, corpus_hash, git_commit, n_items, metrics_json, details_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    created,
                    suite,
                    suite_hash,
                    label,
                    json.dumps(list(suites)),
                    collection,
                    generator.get("backend", ""),
                    generator.get("model", ""),
                    generator.get("adapter"),
                    generator.get("adapter_hash"),
                    generator.get("decoding", ""),
                    json.dumps(generator),
                    json.dumps(config),
                    corpus_hash,
                    git_commit,
                    len(items),
                    json.dumps(metrics, sort_keys=True),
                    json.dumps(details, default=str),
                ),
            )
            db.executemany(
                "INSERT INTO eval_metrics (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, k, v) for k, v in metrics.items()],
            )
            db.executemany(
                "INSERT INTO eval_items (run_id, idx, case_id, kind, question, prediction, refused, correct, gold_json, retrieved_json,"
                " citations_json, groundedness, latency_json, metrics_json, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        i,
                        it.case_id,
                        it.kind,
                        it.question,
                        it.prediction,
                        None if it.refused is None else int(it.refused),
                        None if it.correct is None else int(it.correct),
                        json.dumps(it.gold),
                        _json_or_none(it.retrieved),
                        _json_or_none(it.citations),
                        it.groundedness,
                        _json_or_none(it.latency_ms),
                        json.dumps(it.metrics),
                        it.error,
                    )
                    for i, it in enumerate(items)
                ],
            )
        return RunSummary(
            run_id, created, suite, label, generator, metrics, corpus_hash, git_commit, config, len(items), details
        )

    def load_run(self, run_id: str) -> RunSummary:
        """A stored run by id, unique id prefix (at least 4 characters), or label (the latest run with it).

        Raises ``TetherError`` naming ``tether eval list`` when nothing (or more than one run) matches.
        """
        db = self.db
        row = db.execute("SELECT * FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None and len(run_id) >= 4:
            rows = db.execute("SELECT * FROM eval_runs WHERE id LIKE ? ORDER BY created_at", (run_id + "%",)).fetchall()
            if len(rows) > 1:
                raise TetherError(
                    f"run id prefix {run_id!r} matches {len(rows)} runs: give more characters (tether eval list)"
                )
            row = rows[0] if rows else None
        if row is None:
            row = db.execute(
                "SELECT * FROM eval_runs WHERE label = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (run_id,)
            ).fetchone()
        if row is None:
            raise TetherError(f"no evaluation run {run_id!r} in {self.path}: `tether eval list` shows the stored runs")
        return _summary(row)

    def list_runs(
        self, *, suite: str | None = None, label: str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
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
        return [_summary(r) for r in self.db.execute(sql, args).fetchall()]

    def load_items(self, run_id: str) -> list[EvalItem]:
        """The items of a run, in case order."""
        rows = self.db.execute("SELECT * FROM eval_items WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        loads = lambda v: None if v is None else json.loads(v)  # noqa: E731
        return [
            EvalItem(
                case_id=r["case_id"],
                kind=r["kind"],
                gold=json.loads(r["gold_json"]),
                metrics=json.loads(r["metrics_json"]),
                question=r["question"],
                prediction=r["prediction"],
                refused=None if r["refused"] is None else bool(r["refused"]),
                correct=None if r["correct"] is None else bool(r["correct"]),
                retrieved=loads(r["retrieved_json"]),
                citations=loads(r["citations_json"]),
                groundedness=r["groundedness"],
                latency_ms=loads(r["latency_json"]),
                error=r["error"],
            )
            for r in rows
        ]


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
    with RunStore.open(db_path) as runs:
        return runs.store_run(
            suite=suite,
            suite_hash=suite_hash,
            label=label,
            suites=suites,
            collection=collection,
            generator=generator,
            config=config,
            corpus_hash=corpus_hash,
            git_commit=git_commit,
            metrics=metrics,
            details=details,
            items=items,
        )


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _summary(row) -> RunSummary:
    return RunSummary(
        run_id=row["id"],
        created_at=row["created_at"],
        suite=row["suite"],
        label=row["label"],
        generator=json.loads(row["generator_json"]),
        metrics=json.loads(row["metrics_json"]),
        corpus_hash=row["corpus_hash"],
        git_commit=row["git_commit"],
        config=json.loads(row["config_json"]),
        n_items=row["n_items"],
        details=json.loads(row["details_json"]),
    )


def load_run(db_path: str | Path, run_id: str) -> RunSummary:
    """``RunStore.load_run`` on the database at ``db_path``."""
    with RunStore.open(db_path) as runs:
        return runs.load_run(run_id)


def list_runs(
    db_path: str | Path, *, suite: str | None = None, label: str | None = None, limit: int | None = None
) -> list[RunSummary]:
    """Stored runs, newest first, optionally only those of one suite path or label."""
    with RunStore.open(db_path) as runs:
        return runs.list_runs(suite=suite, label=label, limit=limit)


def load_items(db_path: str | Path, run_id: str) -> list[EvalItem]:
    """The items of a run, in case order."""
    with RunStore.open(db_path) as runs:
        return runs.load_items(run_id)
