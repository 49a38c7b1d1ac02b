"""Training jobs launched from the web app: a detached ``python -m app.ui.jobs`` process per
job (it outlives the page and the browser session), tracked in ``training_jobs`` by
``training.trainers.run``; the page polls that table, the run's ``train.log`` and ``loss_curve.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


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


def new_run_dir(data_dir: Path, method: str) -> Path:
    return Path(data_dir) / "runs" / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def log_tail(path: str | Path, lines: int = 40) -> str:
    p = Path(path)
    if not p.is_file():
        return ""
    with p.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16_000))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


def _main(argv: list[str]) -> int:
    import logging

    from tether.config import load_config
    from training.config import load_train_config
    from training.trainers import run

    method, settings = argv[0], json.loads(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config()
    tc = load_train_config(None, method, defaults=cfg.training, **settings)
    res = run(tc, cfg)
    logging.getLogger(__name__).info(
        "done: adapter %s, model %s, final loss %s", res.adapter_dir, res.model_id, res.final_loss
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
