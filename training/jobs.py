"""Training jobs in ``tether.db`` (``training_jobs``): status, progress, loss and log path, so the
app can show a job that runs in the background and survives a page reload.

``start_job`` → ``update_job`` (each logged step) → ``finish_job`` (done | failed | interrupted).
The web app's evaluation and promotion jobs (methods ``eval`` and ``promote``, ``app/ui/jobs.py``)
are tracked here too, with what they produced in ``result_json``.
A job whose process died without finishing stays ``running`` with a stale ``updated_at``; ``list_jobs``
marks it ``interrupted`` when its pid is gone from this machine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from typing import Any

from tether.clock import now_iso
from tether.db import transaction


def start_job(
    db: sqlite3.Connection,
    method: str,
    config: dict[str, Any],
    output_dir: str,
    log_path: str,
    total_steps: int,
    *,
    job_id: str | None = None,
    pid: int | None = None,
) -> str:
    """A new running job; ``job_id`` and ``pid`` given by a launcher that started the job's process
    (default: a new id, this process)."""
    job_id = job_id or uuid.uuid4().hex[:12]
    now = now_iso()
    with transaction(db):
        db.execute(
            "INSERT INTO training_jobs (id, method, status, config_json, output_dir, log_path, step, total_steps, pid, created_at, updated_at)"
            " VALUES (?, ?, 'running', ?, ?, ?, 0, ?, ?, ?, ?)",
            (job_id, method, json.dumps(config), output_dir, log_path, total_steps, pid or os.getpid(), now, now),
        )
    return job_id


def update_job(
    db: sqlite3.Connection, job_id: str, *, step: int, loss: float | None, total_steps: int | None = None
) -> None:
    with transaction(db):
        db.execute(
            "UPDATE training_jobs SET step = ?, loss = COALESCE(?, loss), total_steps = COALESCE(?, total_steps),"
            " updated_at = ? WHERE id = ?",
            (step, loss, total_steps, now_iso(), job_id),
        )


def finish_job(
    db: sqlite3.Connection,
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    model_id: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """``result``: what the job produced (the app's eval and promote jobs), kept as JSON."""
    now = now_iso()
    with transaction(db):
        db.execute(
            "UPDATE training_jobs SET status = ?, error = ?, model_id = COALESCE(?, model_id),"
            " result_json = COALESCE(?, result_json), updated_at = ?, finished_at = ? WHERE id = ?",
            (status, error, model_id, json.dumps(result) if result is not None else None, now, now, job_id),
        )


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_jobs(db: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, each with its ``result`` (parsed); a 'running' job whose process is gone is
    reported (and stored) as 'interrupted'."""
    rows = [dict(r) for r in db.execute("SELECT * FROM training_jobs ORDER BY created_at DESC LIMIT ?", (limit,))]
    for r in rows:
        r["result"] = json.loads(r.pop("result_json")) if r.get("result_json") else None
        if r["status"] == "running" and not _alive(r["pid"]):
            finish_job(
                db,
                r["id"],
                "interrupted",
                error="the training process ended without finishing; rerun the same command to resume",
            )
            r["status"] = "interrupted"
    return rows
