"""What ``tether train detector`` (``training/detector.py``) and ``tether train reranker``
(``training/reranker.py``) share: one resumable sentence-transformers ``CrossEncoderTrainer`` loop
on the CPU, the atomic write of the trained model, and the ``training_jobs`` row that tracks a run.

``fit`` trains from the last checkpoint under ``checkpoints`` (a rerun of the same command resumes),
stops, checkpointed, once ``max_minutes`` have passed, and reports progress to the log and to
``on_step(step, total, loss)``. ``save_model`` writes the model and its cards into a temporary
folder and renames it into place, so a kill never leaves half a model where the registry looks.
Heavy imports stay inside the functions.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OnStep = Callable[[int, int, "float | None"], None]


@dataclass(frozen=True)
class FitSettings:
    """The loop's knobs, taken from a DetectorConfig or a RerankerConfig (both validated)."""

    what: str  # names the log lines: "detector", "reranker"
    total_steps: int
    batch_size: int
    learning_rate: float
    epochs: float
    seed: int
    save_steps: int
    max_minutes: float


@dataclass(frozen=True)
class Fit:
    steps: int
    total_steps: int
    finished: bool  # False: stopped at max_minutes (rerun to resume)
    seconds: float
    losses: list[float] = field(default_factory=list)
    train_loss: float | None = None
    resumed_from: str | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def collection_chunks(cfg: Any, what: str) -> list[Any]:
    """Every chunk of the configured collection (``retrieval.ledger.ChunkRow``, heading included),
    which ``what`` ("the detector", "the reranker") is trained from; a clear error when it is empty."""
    from retrieval.ledger import Ledger
    from tether.errors import TetherError

    with Ledger.open(cfg.db_path) as ledger:
        chunks = ledger.collection_chunks(cfg.retrieval.collection)
    if not chunks:
        raise TetherError(
            f"collection {cfg.retrieval.collection!r} holds no chunks: `tether ingest FOLDER` first, "
            f"then train {what} on it"
        )
    return chunks


def loop_problems(c: Any) -> list[str]:
    """What is wrong with the training-loop fields of a run config ``c`` (a DetectorConfig or a
    RerankerConfig: batch_size, max_length, save_steps, epochs, learning_rate, max_minutes, max_steps)."""
    out = [
        f"--{name.replace('_', '-')} ({getattr(c, name)}) must be >= 1"
        for name in ("batch_size", "max_length", "save_steps")
        if getattr(c, name) < 1
    ]
    if not c.epochs > 0:
        out.append(f"--epochs ({c.epochs}) must be > 0")
    if not 0 < c.learning_rate < 1:
        out.append(f"--learning-rate ({c.learning_rate}) must be in (0, 1)")
    if not c.max_minutes > 0:
        out.append(f"--max-minutes ({c.max_minutes}) must be > 0")
    if c.max_steps == 0 or c.max_steps < -1:
        out.append(f"--max-steps ({c.max_steps}) must be -1 (epochs decide) or >= 1")
    return out


def settings_for(c: Any, what: str, n_rows: int) -> FitSettings:
    """The loop's settings from a run config ``c`` for ``n_rows`` training rows."""
    return FitSettings(
        what=what,
        total_steps=total_steps(n_rows, c.batch_size, c.epochs, c.max_steps),
        batch_size=c.batch_size,
        learning_rate=c.learning_rate,
        epochs=c.epochs,
        seed=c.seed,
        save_steps=c.save_steps,
        max_minutes=c.max_minutes,
    )


def total_steps(n_rows: int, batch_size: int, epochs: float, max_steps: int) -> int:
    """``max_steps`` when set (> 0), else the steps of ``epochs`` passes over ``n_rows``."""
    if max_steps > 0:
        return max_steps
    return max(1, int(round(-(-n_rows // batch_size) * epochs)))


def latest_checkpoint(folder: Path) -> Path | None:
    """The Trainer's newest ``checkpoint-N`` folder under ``folder``, or None."""
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return found[-1] if found else None


def versions() -> dict[str, str]:
    """The versions of the libraries a trained cross-encoder depends on, for its ``run.yaml``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sentence-transformers", "transformers", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def fit(
    model: Any, data: Any, loss: Any, settings: FitSettings, checkpoints: Path, on_step: OnStep | None = None
) -> Fit:
    """Train ``model`` (a ``CrossEncoder``) on ``data`` (a ``datasets.Dataset``) with ``loss``,
    resuming from the newest checkpoint under ``checkpoints``."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import PrinterCallback, TrainerCallback

    s = settings
    total = s.total_steps
    resume = latest_checkpoint(checkpoints)
    started = time.monotonic()
    seen: list[float] = []
    first_step = [0]  # the step this process started from (a resumed run counts its own speed)

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            first_step[0] = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            value = (logs or {}).get("loss")
            if value is not None:
                seen.append(float(value))
            elapsed = time.monotonic() - started
            log.info(
                "%s step %d/%d loss %s (%.0f s, %.1f examples/s)",
                s.what,
                state.global_step,
                total,
                f"{value:.4f}" if value is not None else "-",
                elapsed,
                (state.global_step - first_step[0]) * s.batch_size / max(elapsed, 1e-9),
            )
            if on_step is not None:
                on_step(state.global_step, total, float(value) if value is not None else None)

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - started > s.max_minutes * 60 and state.global_step < total:
                log.warning(
                    "%s training stopped at %.1f minutes (step %d/%d): rerun the same command to resume",
                    s.what,
                    s.max_minutes,
                    state.global_step,
                    total,
                )
                control.should_save = True
                control.should_training_stop = True
            return control

    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=s.epochs,
        max_steps=total,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=max(1, total // 10),
        use_cpu=True,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(10, total // 20 or 1)),
        report_to="none",
        seed=s.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Progress()])
    trainer.remove_callback(PrinterCallback)  # progress goes to the log (Progress), not print()
    if resume is not None:
        log.info("resuming the %s from %s", s.what, resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = int(trainer.state.global_step)
    return Fit(
        steps=step,
        total_steps=total,
        finished=step >= total,
        seconds=time.monotonic() - started,
        losses=seen,
        train_loss=getattr(result, "training_loss", None),
        resumed_from=str(resume) if resume else None,
    )


def save_model(model: Any, target: Path, files: Mapping[str, str]) -> Path:
    """Write ``model`` and ``files`` (name -> text: its cards) into ``target``: saved into a
    temporary folder beside it, then renamed into place (a model already there is replaced whole)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for name, text in files.items():
        (tmp / name).write_text(text, encoding="utf-8")
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


class TrackedJob:
    """A ``training_jobs`` row (method ``detector`` or ``reranker``) that follows one run: started
    here, updated at each log step (``on_step``), ended as done, interrupted or failed."""

    def __init__(self, db_path: Path, method: str, config: dict[str, Any], out: Path):
        from training.registry import TrainingStore

        self._open = lambda: TrainingStore.open(db_path)
        with self._open() as store:
            self.id = store.start_job(method, config, str(out), str(out / "train.log"), 0)

    def on_step(self, step: int, total: int, loss: float | None) -> None:
        with self._open() as store:
            store.update_job(self.id, step=step, loss=loss, total_steps=total)

    def failed(self, exc: BaseException) -> None:
        with self._open() as store:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            store.finish_job(self.id, status, error=str(exc)[:500])

    def stopped(self, max_minutes: float) -> None:
        with self._open() as store:
            error = f"stopped at --max-minutes {max_minutes}: rerun to resume"
            store.finish_job(self.id, "interrupted", error=error)

    def done(self, result: dict[str, Any]) -> None:
        with self._open() as store:
            store.finish_job(self.id, "done", result=result)


@dataclass(frozen=True)
class CrossEncoderRun:
    """What ``tether train detector`` / ``reranker`` did: the model folder (written only when
    ``finished``), the steps, the time, the data manifest, and once registered its registry id."""

    model_dir: Path
    steps: int
    final_loss: float | None
    seconds: float
    resumed_from: str | None
    finished: bool  # False: stopped at max_minutes (rerun to resume)
    manifest: dict[str, Any]
    registered_id: str | None = None
    job_id: str | None = None
