"""SFT, DPO and KTO for real on the CPU with a tiny random Llama: finite loss, changed adapter
weights, the reference = the base with the adapter disabled, resume after an interruption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.tiny_llm import make_tiny_llm
from tests.training_fixtures import COUNTERFACTUALS, seed_log_db
from training.config import DataConfig, load_train_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a seeded log database and the datasets built from it (shared by the module)."""
    import torch

    from tether.config import load_config
    from training.data import build_datasets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster than two on a shared 2-core machine
    root = tmp_path_factory.mktemp("train")
    cfg = load_config(root / "data")
    seed_log_db(cfg.db_path)
    model = make_tiny_llm(root / "tiny")
    from tether.db import connect
    from training.registry import record_dataset

    db = connect(cfg.db_path)
    build_datasets(
        cfg,
        DataConfig(out_dir=str(root / "ds"), eval_fraction=0.1),
        counterfactual_rows=COUNTERFACTUALS,
        record=lambda m: record_dataset(db, m),
    )
    db.close()
    yield {"cfg": cfg, "model": model, "root": root, "ds": root / "ds"}
    torch.set_num_threads(threads)


def _tc(world, method, out, **kw):
    base = dict(
        base_model=str(world["model"]),
        dataset=str(world["ds"] / method),
        output_dir=str(world["root"] / out),
        max_steps=6,
        lora_r=4,
        lora_alpha=8,
        learning_rate=5e-3,
        max_length=512,
        save_steps=3,
        device="cpu",
        batch_size=2,
        grad_accum=1,
    )
    base.update(kw)
    return load_train_config(None, method, **base)


def _weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _finite_losses(curve: Path) -> list[float]:
    losses = [r["loss"] for r in json.loads(curve.read_text())["records"] if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    return losses


@pytest.fixture(scope="module")
def sft(world):
    from training.trainers import run

    return run(_tc(world, "sft", "sft"), world["cfg"])


def test_sft_trains_the_adapter(world, sft):
    assert sft.steps == 6
    _finite_losses(sft.loss_curve)
    w = _weights(sft.adapter_dir)
    lora_b = [v for k, v in w.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero: it moved
    # all-linear: attention and MLP projections both carry LoRA
    assert any("mlp.down_proj" in k for k in w) and any("self_attn.q_proj" in k for k in w)
    import yaml

    info = yaml.safe_load((sft.output_dir / "run.yaml").read_text())
    manifest = json.loads((world["ds"] / "sft" / "manifest.json").read_text())
    assert info["final_loss"] == sft.final_loss and info["steps"] == 6 and info["dataset"]["hash"] == manifest["hash"]


def test_sft_job_and_registry_rows(world, sft):
    from tether.db import connect

    db = connect(world["cfg"].db_path)
    job = dict(db.execute("SELECT * FROM training_jobs WHERE id = ?", (sft.job_id,)).fetchone())
    assert job["status"] == "done" and job["step"] == 6 and job["total_steps"] == 6 and Path(job["log_path"]).is_file()
    model = dict(db.execute("SELECT * FROM models WHERE id = ?", (sft.model_id,)).fetchone())
    manifest = json.loads((world["ds"] / "sft" / "manifest.json").read_text())
    assert model["kind"] == "adapter" and model["method"] == "sft" and model["dataset_id"] == manifest["id"]
    assert model["base"] == str(world["model"]) and model["job_id"] == sft.job_id
    assert "step 6/6" in Path(job["log_path"]).read_text()


def test_dpo_on_top_of_sft_uses_the_adapter_disabled_reference_and_stacks_exactly(world, sft):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.trainers import run

    res = run(_tc(world, "dpo", "dpo", init_adapter=str(sft.adapter_dir), beta=0.1), world["cfg"])
    losses = _finite_losses(res.loss_curve)
    # DPO loss starts at log(2): the policy equals the reference (base + SFT merged, adapter disabled)
    assert abs(losses[0] - math.log(2)) < 1e-3
    stage = _weights(res.output_dir / "adapter-stage")
    assert any(float(v.abs().max()) > 0 for k, v in stage.items() if "lora_B" in k)
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 8  # SFT r=4 + DPO r=4, one adapter
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        merged = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(world["model"]), str(sft.adapter_dir)
        ).merge_and_unload()
        two_step = PeftModel.from_pretrained(merged, str(res.output_dir / "adapter-stage"))(ids).logits
        stacked = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["model"]), str(res.adapter_dir))(
            ids
        ).logits
    assert torch.allclose(two_step, stacked, atol=1e-5)


def test_kto_trains_from_single_thumbs(world):
    from training.trainers import run

    res = run(_tc(world, "kto", "kto"), world["cfg"])
    _finite_losses(res.loss_curve)
    assert any(float(v.abs().max()) > 0 for k, v in _weights(res.adapter_dir).items() if "lora_B" in k)


def test_resume_after_an_interruption(world):
    from tether.db import connect
    from training.trainers import run

    tc = _tc(world, "sft", "sft-resume", max_steps=6, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run(tc, world["cfg"], stop_at=3)
    out = Path(tc.output_dir)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter").exists()
    db = connect(world["cfg"].db_path)
    assert (
        db.execute("SELECT status FROM training_jobs ORDER BY created_at DESC LIMIT 1").fetchone()[0] == "interrupted"
    )
    res = run(tc, world["cfg"])
    assert res.resumed_from and res.resumed_from.endswith("checkpoint-2") and res.steps == 6
    steps = [r["step"] for r in json.loads(res.loss_curve.read_text())["records"] if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 3 (after the checkpoint) is recorded once, from the resumed run


def test_max_minutes_stops_training_with_the_adapter_saved(world):
    """--max-minutes is a wall-clock budget: the run stops at the first step past it, saves its
    checkpoint and adapter like a finished run and says so in run.yaml."""
    import yaml

    from training.trainers import run

    res = run(_tc(world, "sft", "sft-budget", max_steps=500, max_minutes=0.0001), world["cfg"])
    assert 1 <= res.steps < 500
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    info = yaml.safe_load((res.output_dir / "run.yaml").read_text())
    assert info["stopped_at_max_minutes"] is True and info["steps"] == res.steps
    assert res.stopped_at_max_minutes is True
    assert any(p.name == f"checkpoint-{res.steps}" for p in (res.output_dir / "checkpoints").iterdir())


def test_max_minutes_is_validated():
    from tether.errors import ConfigError

    with pytest.raises(ConfigError, match="max_minutes"):
        load_train_config(None, "sft", base_model="x", dataset="d", output_dir="o", max_minutes=-1)


def test_planner_on_the_cpu_and_for_an_8b_shape():
    from tether.errors import ConfigError
    from training.planner import Device, ModelShape, plan_training

    cpu = plan_training(ModelShape(64, 2, 128, 4, 2, 400), Device("cpu", "2 cores", 8.0), seq_len=512)
    assert cpu.quantize == "none" and not cpu.liger and cpu.dtype == "float32"
    llama8b = ModelShape(4096, 32, 14336, 32, 8, 128256)
    assert 7.9e9 < llama8b.params < 8.1e9
    h100 = Device("cuda", "H100", 79.6, bf16=True, liger_available=True)
    planned = plan_training(llama8b, h100, seq_len=2048)
    forced = plan_training(llama8b, h100, seq_len=2048, quantize="4bit")
    assert planned.quantize == "none" and not planned.gradient_checkpointing and planned.liger
    assert forced.quantize == "4bit" and forced.estimate_gib < 0.5 * planned.estimate_gib
    with pytest.raises(ConfigError, match="no training configuration fits"):
        plan_training(llama8b, Device("cuda", "small", 4.0, bf16=True), seq_len=2048)


def test_qlora_4bit_path_runs_on_the_cpu(world):
    pytest.importorskip("bitsandbytes")
    from training.trainers import run

    res = run(
        _tc(world, "sft", "sft-4bit", quantize="4bit", max_steps=3, save_steps=10, target_modules="q_proj,v_proj"),
        world["cfg"],
    )
    _finite_losses(res.loss_curve)
    assert res.plan["quantize"] == "4bit"
    assert any(float(v.abs().max()) > 0 for k, v in _weights(res.adapter_dir).items() if "lora_B" in k)


@pytest.mark.gpu
def test_qlora_with_liger_on_cuda(world):
    from training.trainers import run

    res = run(_tc(world, "sft", "sft-cuda", device="cuda", quantize="4bit", liger="auto", max_steps=3), world["cfg"])
    _finite_losses(res.loss_curve)
    assert res.plan["device"]["kind"] == "cuda"
