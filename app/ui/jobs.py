"""Long work launched from the web app, each a detached ``python -m app.ui.jobs METHOD SETTINGS``
process (it outlives the page and the browser session), tracked in ``training_jobs``:

- ``sft | dpo | kto``: training, tracked by ``training.trainers.run``; the page also reads the run's
  ``train.log`` and ``loss_curve.json``.
- ``eval``: an evaluation run (``assistant.evaluation.suites.run_suite``), one step per case;
  its result is the stored run's id.
- ``promote``: ``training.registry.promote`` (two evaluation runs, then the gate); its result is
  the promotion, or the gate's rows when the gate refused it (status ``failed``).
- ``detector``: ``tether train detector`` (``training.detector.run``: pairs from the collection,
  the CrossEncoder, its gate on the labelled conflict sets, promotion when it beats the rules);
  it records its own job, like training; its log goes to the job's ``train.log``, whose step lines
  give the loss curve (``detector_loss_records``).
- ``adapt``: ``tether train adapt`` (``training.adapt.run``: questions from the collection, SFT
  rows through the engine's own prompts, SFT, on-policy DPO/KTO, the gate, promotion); it records
  its own job (one step per stage) in the collection's run folder, which a rerun resumes.

``launch_job`` records an ``eval`` or ``promote`` job before its process has imported anything,
so the page lists it at once; the pages poll the table every few seconds (``st.fragment``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BACKGROUND = ("eval", "promote")  # the jobs launch_job records (training records its own)
DETECTOR = "detector"  # tether train detector, which records its own job
DETECTOR_SETTINGS = ("max_pairs", "epochs", "batch_size", "max_minutes", "max_steps", "seed")
ADAPT = "adapt"  # tether train adapt, which records its own job
_DETECTOR_STEP = re.compile(r"detector step (\d+)/\d+ loss (\d+(?:\.\d+)?(?:e-?\d+)?)")
log = logging.getLogger(__name__)


def launch(data_dir: Path, method: str, settings: dict[str, Any]) -> tuple[int, Path]:
    """Start one training stage in the background; return (pid, its console log)."""
    out = Path(settings["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.log"
    env = {
        **os.environ,
        "TETHER_HOME": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with console.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.ui.jobs", method, json.dumps(settings)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid, console


def launch_job(data_dir: Path, method: str, settings: dict[str, Any]) -> str:
    """Start an ``eval`` or ``promote`` job in the background and record it; returns its job id."""
    from training.registry import TrainingStore

    if method not in BACKGROUND:
        raise ValueError(f"launch_job runs {', '.join(BACKGROUND)}, not {method!r} (training: launch)")
    job_id = uuid.uuid4().hex[:12]
    out = new_run_dir(data_dir, method)
    settings = {**settings, "job_id": job_id, "output_dir": str(out)}
    pid, console = launch(data_dir, method, settings)
    with TrainingStore.open(Path(data_dir) / "tether.db") as store:
        store.start_job(method, settings, str(out), str(console), 0, job_id=job_id, pid=pid)
    log.info("started %s job %s (pid %d)", method, job_id, pid)
    return job_id


def new_run_dir(data_dir: Path, method: str) -> Path:
    return Path(data_dir) / "runs" / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def loss_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """The (step, loss) records of a run's loss_curve.json; [] before the first logged step."""
    path = Path(output_dir) / "loss_curve.json"
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text()).get("records", [])
    except (json.JSONDecodeError, OSError):  # being rewritten right now: the next poll reads it
        return []
    return [{"step": r["step"], "loss": r["loss"]} for r in records if r.get("loss") is not None]


def detector_loss_records(log_path: str | Path) -> list[dict[str, Any]]:
    """The (step, loss) records of a detector job, read from its log's step lines
    ("detector step 10/40 loss 0.8123 (12 s)"); [] before the first one."""
    return [
        {"step": int(m.group(1)), "loss": float(m.group(2))}
        for m in (_DETECTOR_STEP.search(line) for line in log_tail(log_path, lines=100_000).splitlines())
        if m
    ]


def detector_config(output_dir: str | Path, settings: dict[str, Any]):
    """The ``DetectorConfig`` of a detector job (raises ``ConfigError`` with every bad setting)."""
    from training.detector import DetectorConfig

    return DetectorConfig(
        out_dir=str(output_dir), **{k: settings[k] for k in DETECTOR_SETTINGS if k in settings}
    ).validated()


def adapt_config(output_dir: str | Path, settings: dict[str, Any]):
    """The ``AdaptConfig`` of an adapt job: any of its settings but ``out_dir`` (the job's folder)
    may be given; raises ``ConfigError`` with every bad setting."""
    from dataclasses import fields

    from training.adapt import AdaptConfig

    names = {f.name for f in fields(AdaptConfig)} - {"out_dir"}
    return AdaptConfig(out_dir=str(output_dir), **{k: settings[k] for k in names if k in settings}).validated()


def adapt_dir(cfg) -> Path:
    """The collection's adapt run folder, the same as ``tether train adapt``'s (so either resumes the other)."""
    return Path(cfg.models_dir) / f"adapt-{cfg.retrieval.collection}"


def log_tail(path: str | Path, lines: int = 40) -> str:
    p = Path(path)
    if not p.is_file():
        return ""
    with p.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16_000))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


def _main(argv: list[str]) -> int:
    from tether.config import load_config

    method, settings = argv[0], json.loads(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config()
    if method in BACKGROUND:
        return _background(cfg, method, settings)
    if method == DETECTOR:
        return _detector(cfg, settings)
    if method == ADAPT:
        return _adapt(cfg, settings)
    from training.config import load_train_config
    from training.trainers import run

    tc = load_train_config(None, method, defaults=cfg.training, **settings)
    res = run(tc, cfg)
    log.info("done: adapter %s, model %s, final loss %s", res.adapter_dir, res.model_id, res.final_loss)
    return 0


def _background(cfg, method: str, settings: dict[str, Any]) -> int:
    """Run an ``eval`` or ``promote`` job recorded by ``launch_job``, with its progress and result."""
    from tether.errors import TetherError
    from training import registry

    job_id = settings["job_id"]
    with registry.TrainingStore.open(cfg.db_path) as store:

        def progress(done: int, total: int) -> None:
            store.update_job(job_id, step=done, loss=None, total_steps=total)
            log.info("%s: %d of %d", method, done, total)

        try:
            if method == "eval":
                result = _evaluate(cfg, settings, progress)
            else:
                result = registry.promote(
                    cfg,
                    settings["model_id"],
                    settings["suite"],
                    user=settings.get("user"),
                    progress=progress,
                    held_out=[(Path(d), Path(f)) for d, f in settings.get("held_out", [])],
                )
        except registry.PromotionRefused as exc:
            gate = getattr(exc, "gate", None)
            store.finish_job(
                job_id, "failed", error=str(exc), result={"refused": True, "gate": gate.to_json() if gate else None}
            )
            log.info("promotion refused: %s", exc)
            return 1
        except TetherError as exc:
            store.finish_job(job_id, "failed", error=str(exc))
            log.error("%s failed: %s", method, exc)
            return 2
        except BaseException as exc:
            store.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc} (the console log has the traceback)")
            raise
        store.finish_job(job_id, "done", result=result, model_id=result.get("model_id"))
    log.info("%s done: %s", method, result)
    return 0


@contextmanager
def _train_log(out: Path) -> Iterator[None]:
    """Every log line of the block also goes to ``out/train.log`` (the folder made first), where the
    job panel reads it."""
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _detector(cfg, settings: dict[str, Any]) -> int:
    """``tether train detector`` for the Admin page (whose admin is signed in: no admin password),
    gated on the same labelled sets as the command; its log lines go to the job's ``train.log``."""
    from training.detector import default_gate_sets, run

    out = Path(settings["output_dir"])
    with _train_log(out):
        res, report = run(
            cfg,
            detector_config(out, settings),
            gate_sets=default_gate_sets(ROOT),
            promote=settings.get("promote", True),
        )
    log.info("detector done: %s, steps %d, gate %s", res.registered_id, res.steps, (report or {}).get("reason"))
    return 0 if res.finished else 1


def _adapt(cfg, settings: dict[str, Any]) -> int:
    """``tether train adapt`` for the Admin page (whose admin is signed in: no admin password); its
    log lines go to the run folder's ``train.log``."""
    from training.adapt import run

    out = Path(settings["output_dir"])
    with _train_log(out):
        res = run(cfg, adapt_config(out, settings), promote=settings.get("promote", True))
    log.info("adapt done: model %s, promoted %s", res.model_id, res.promoted)
    return 0


def _evaluate(cfg, settings: dict[str, Any], progress) -> dict[str, Any]:
    from assistant.evaluation.suites import QA_SUITES, run_suite
    from training.registry import RegistryModelSource

    run_cfg = cfg.with_assistant(
        generator=settings.get("generator") or cfg.assistant.generator,
        model=settings.get("model") or cfg.assistant.model,
        adapter=settings.get("adapter") or None,
    )
    summary = run_suite(
        run_cfg,
        Path(settings["suite"]),
        label=settings.get("label") or None,
        suites=settings.get("suites") or QA_SUITES,
        model_source=RegistryModelSource(),
        progress=progress,
    )
    return {"run_id": summary.run_id, "n_items": summary.n_items, "label": summary.label}


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
