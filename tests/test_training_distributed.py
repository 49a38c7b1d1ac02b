"""`tether train sft|dpo` unchanged under `accelerate launch` with two CPU processes (DDP over gloo,
the shipped training/configs/accelerate_cpu_ddp.yaml): both ranks train and exit 0, and every side
effect happens once, on the main process: one adapter (that loads), one loss record and one log line
per step, one result on stdout, one `training_jobs` row and one `models` row per run.

Each launch is a whole `accelerate launch` subprocess (two Python processes importing torch and trl on
a shared 2-core machine): about 30-40 s each."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_llm import make_tiny_llm
from tests.training_fixtures import COUNTERFACTUALS, seed_log_db
from training.config import DataConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DDP_CONFIG = ROOT / "training/configs/accelerate_cpu_ddp.yaml"
LAUNCH_TIMEOUT = 300


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a seeded log database and the datasets built from it; no model or job rows yet."""
    from tether.config import load_config
    from tether.db import connect
    from training.data import build_datasets
    from training.registry import record_dataset

    root = tmp_path_factory.mktemp("distributed")
    cfg = load_config(root / "data")
    seed_log_db(cfg.db_path)
    model = make_tiny_llm(root / "tiny")
    db = connect(cfg.db_path)
    build_datasets(
        cfg,
        DataConfig(out_dir=str(root / "ds"), eval_fraction=0.1),
        counterfactual_rows=COUNTERFACTUALS,
        record=lambda m: record_dataset(db, m),
    )
    db.close()
    return {"cfg": cfg, "model": model, "root": root, "ds": root / "ds"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, method: str, out: str, steps: int, *flags: str) -> dict:
    """`accelerate launch --config_file accelerate_cpu_ddp.yaml -m app.cli train METHOD ...` on 2 CPU processes."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(DDP_CONFIG),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "app.cli",
        "--data-dir",
        str(world["cfg"].data_dir),
        "train",
        method,
        "--base-model",
        str(world["model"]),
        "--dataset",
        str(world["ds"] / method),
        "--output-dir",
        str(world["root"] / out),
        "--max-steps",
        str(steps),
        "--save-steps",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--learning-rate",
        "5e-3",
        "--max-length",
        "512",
        "--device",
        "cpu",
        "--grad-accum",
        "1",
        *flags,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["OMP_NUM_THREADS"] = "1"  # one thread per rank on a 2-core machine
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"accelerate launch exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    return {
        "proc": proc,
        "seconds": seconds,
        "out": world["root"] / out,
        "steps": steps,
        "result": json.loads(proc.stdout),  # exactly one JSON document: only the main process prints
    }


def _rows(world, table: str) -> list[dict]:
    db = sqlite3.connect(world["cfg"].db_path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY created_at")]
    finally:
        db.close()


def _assert_once(world, run: dict, method: str) -> dict:
    """Two ranks ran; each side effect of the run happened once. Returns the run's loss records."""
    out, steps, res = run["out"], run["steps"], run["result"]
    import yaml

    info = yaml.safe_load((out / "run.yaml").read_text())
    assert info["processes"] == {"world_size": 2, "distributed_type": "MULTI_CPU"}, info["processes"]
    assert info["steps"] == steps and res["steps"] == steps
    # the loss curve: every step once
    records = [r for r in json.loads((out / "loss_curve.json").read_text())["records"] if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    # train.log and the progress log on stderr: one line per step, one save, one summary
    log = (out / "train.log").read_text()
    stderr = run["proc"].stderr
    for text in (log, stderr):
        for step in range(1, steps + 1):
            assert len(re.findall(rf"step {step}/{steps} loss ", text)) == 1, text
        assert text.count("adapter saved to") == 1 and text.count(f"{method} done:") == 1
        assert text.count("2 processes (MULTI_CPU)") == 1
    # the registry: one job row and one model row for this run, linked to each other
    jobs = [j for j in _rows(world, "training_jobs") if j["output_dir"] == str(out)]
    models = [m for m in _rows(world, "models") if m["path"] == str(out / "adapter")]
    assert len(jobs) == 1 and len(models) == 1, (jobs, models)
    job, model = jobs[0], models[0]
    assert job["status"] == "done" and job["step"] == steps and job["model_id"] == model["id"] == res["model_id"]
    assert model["job_id"] == job["id"] == res["job_id"] and model["method"] == method
    return records


def _load_adapter(world, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["model"]), str(adapter))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # B starts at zero: training moved it
    return model


@pytest.fixture(scope="module")
def sft(world):
    assert not _rows(world, "models") and not _rows(world, "training_jobs")
    return _launch(world, "sft", "sft", 4, "--batch-size", "2")


def test_sft_on_two_processes_writes_logs_and_records_once(world, sft):
    _assert_once(world, sft, "sft")
    assert len(_rows(world, "models")) == 1 and len(_rows(world, "training_jobs")) == 1
    _load_adapter(world, sft["out"] / "adapter")


def test_dpo_on_top_of_sft_on_two_processes(world, sft):
    run = _launch(world, "dpo", "dpo", 3, "--batch-size", "1", "--init-adapter", str(sft["out"] / "adapter"))
    records = _assert_once(world, run, "dpo")
    assert abs(records[0]["loss"] - math.log(2)) < 1e-3  # policy = reference (base + SFT, adapter disabled)
    assert len(_rows(world, "models")) == 2 and len(_rows(world, "training_jobs")) == 2
    cfg = json.loads((run["out"] / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8  # the SFT parent stacked in: one adapter
    _load_adapter(world, run["out"] / "adapter")
