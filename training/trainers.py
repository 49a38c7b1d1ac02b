"""SFT, DPO and KTO with a LoRA adapter (trl 1.16 + peft), top to bottom.

    run(cfg, tether_cfg) -> TrainResult

1. resolve the base model offline; plan memory and speed for the device (``training.planner``)
2. load the base (bf16/fp32, or nf4 via bitsandbytes for QLoRA); a parent adapter
   (``init_adapter``) is merged into it in memory
3. train a fresh LoRA with trl's ``SFTTrainer`` / ``DPOTrainer`` / ``KTOTrainer``. DPO and KTO get no
   reference model: trl computes reference log-probs with the adapter disabled, i.e. the base (with
   the parent merged) — no second copy of the weights
4. checkpoints every ``save_steps`` under ``checkpoints/``: rerunning the same command resumes from
   the last one; the loss curve (``loss_curve.json``) and the job row in ``tether.db`` are updated at
   every logged step; the log goes to ``train.log``
5. save ``adapter/`` (the parent stacked in, see ``training.adapters``) and ``run.yaml`` (resolved
   config, plan, dataset manifest, versions, git commit, final loss)

SFT rows (``messages``) are trained as prompt/completion, so the loss covers the answer only.

The same ``run`` works under ``accelerate launch`` (torchrun: DDP over gloo on the CPU or NCCL on GPUs,
or FSDP; configs in ``training/configs/accelerate_*.yaml``). Every side effect happens once, on the
main process (rank 0): ``train.log``, the progress log, ``loss_curve.json``, the job row, the saved
adapter, ``run.yaml`` and the ``models`` row. The other ranks train, then wait in ``main_only`` until
the main process has finished writing, so nothing reads a half-written adapter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tether.errors import BackendUnavailable, TetherError
from tether.provenance import git_commit
from training.config import TrainConfig, to_dict

log = logging.getLogger(__name__)


class MainProcessFailed(TetherError):
    """Raised on the other ranks when a step that only the main process runs failed there; the main
    process reports the real error, so a CLI exits quietly on this one."""


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a launch: rank 0 of 1 without a launcher."""

    rank: int
    world_size: int
    distributed_type: str = "NO"  # accelerate's name: NO | MULTI_CPU | MULTI_GPU | FSDP | ...

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def processes(device: str = "auto") -> Processes:
    """This process's rank. Under a launcher (``WORLD_SIZE`` > 1: ``accelerate launch``, torchrun) it
    joins the process group through accelerate's ``PartialState`` (gloo when training on the CPU, NCCL
    on CUDA), which the trainer then reuses; without one nothing is initialised."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(0, 1)
    from accelerate import PartialState

    from training.planner import detect_device

    state = PartialState(cpu=detect_device(device).kind == "cpu")
    kind = "FSDP" if _fsdp() else state.distributed_type.value
    return Processes(state.process_index, state.num_processes, kind)


def main_only(procs: Processes, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the main process only; every other rank waits for it and returns its result (it
    must pickle), or raises ``MainProcessFailed`` when ``fn`` raised there (the main process re-raises
    the original)."""
    if procs.world_size == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if procs.is_main:
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:
            dist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise MainProcessFailed(f"the main process failed: {value}")
    return value


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float
    loss_curve: Path
    resumed_from: str | None
    plan: dict[str, Any]
    job_id: str | None = None
    model_id: str | None = None
    stopped_at_max_minutes: bool = False  # the time budget ended it early; rerun to resume


# -- the loss curve and progress --------------------------------------------------------------


def _loss_callback(
    curve_path: Path,
    on_step: Callable[[int, float | None], None] | None,
    stop_at: int | None = None,
    max_minutes: float = 0.0,
):
    from transformers import TrainerCallback

    class LossCurve(TrainerCallback):
        """Appends every log record to ``loss_curve.json`` (atomic rewrite) and reports progress, on
        the main process only; ends training (checkpointed, the adapter saved as usual) once
        ``max_minutes`` have passed in this process, every rank at the same step; (tests only) raises
        KeyboardInterrupt after step ``stop_at`` to simulate a kill."""

        def __init__(self):
            self.records: list[dict[str, Any]] = []
            self.started = time.monotonic()
            self.out_of_time = False

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.monotonic()
            if not state.is_world_process_zero:  # one curve and one progress log, from the main process
                return
            if curve_path.is_file():  # resuming: keep the records up to the checkpoint's step
                old = json.loads(curve_path.read_text())
                self.records = [r for r in old.get("records", []) if r.get("step", 0) <= state.global_step]

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero:  # the logged loss is already the mean over the ranks
                return
            logs = dict(logs or {})
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": time.time(), **logs}
            self.records.append(rec)
            tmp = curve_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"max_steps": state.max_steps, "records": self.records}, indent=1))
            os.replace(tmp, curve_path)
            loss = logs.get("loss")
            if loss is not None:
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, loss)
            if on_step is not None:
                on_step(state.global_step, loss)

        def on_step_end(self, args, state, control, **kw):
            if stop_at is not None and state.global_step >= stop_at:
                raise KeyboardInterrupt(f"stopped after step {state.global_step} (simulated interruption)")
            if max_minutes > 0 and _any_rank(time.monotonic() - self.started >= 60 * max_minutes):
                self.out_of_time = True
                control.should_training_stop = True
                control.should_save = True
                log.info(
                    "stopping at step %d/%d: --max-minutes %g reached", state.global_step, state.max_steps, max_minutes
                )

    return LossCurve()


def _any_rank(flag: bool) -> bool:
    """``flag`` on any process of a launch (every rank must stop at the same step), or this one's alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# -- loading ----------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def resolve_base(cfg: TrainConfig, models_dir: Path) -> Path:
    from assistant.models import resolve_model

    return resolve_model(cfg.base_model, models_dir)


def load_model(base: Path, plan, *, init_adapter: str | None, device: str):
    """The base model for training (nf4 when the plan says 4-bit), with ``init_adapter`` merged in."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, plan.dtype)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if plan.quantize == "4bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("4-bit QLoRA needs bitsandbytes: pip install 'tether[gpu]'") from exc
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if plan.device.kind == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=compute,
        )
        # each rank loads onto its own GPU (LOCAL_RANK under a launcher)
        kwargs["device_map"] = {"": _local_rank()} if plan.device.kind == "cuda" else {"": "cpu"}
    if init_adapter and plan.quantize == "4bit":
        # merge into full-precision weights first, then quantize: merging into nf4 would round the delta away
        full = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=dtype)
        full = _merge(full, init_adapter)
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="tether-merged-"))
        try:
            full.save_pretrained(tmp)
            del full
            model = AutoModelForCausalLM.from_pretrained(tmp, **kwargs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        if init_adapter:
            model = _merge(model, init_adapter)
    if plan.quantize != "4bit" and plan.device.kind == "cuda" and not _fsdp():
        model.to(f"cuda:{_local_rank()}")  # under FSDP the model stays put: accelerate shards it over the GPUs
    return model


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def _merge(model, adapter: str):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def load_tokenizer(base: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise BackendUnavailable(f"the tokenizer in {base} has no chat template; training data are chat rows")
    return tok


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules_arg,
        bias="none",
        task_type="CAUSAL_LM",
    )


def common_args(cfg: TrainConfig, plan, ckpt_dir: Path) -> dict[str, Any]:
    """TrainingArguments shared by the three trainers."""
    cpu = plan.device.kind == "cpu"
    return dict(
        output_dir=str(ckpt_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=plan.batch_size,
        per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        use_cpu=cpu,
        bf16=plan.dtype == "bfloat16",
        activation_checkpointing=plan.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        use_liger_kernel=plan.liger,
        disable_tqdm=True,
        dataloader_num_workers=0,
        max_length=cfg.max_length,
        eval_strategy="no",
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in each forward pass
    )


def _dataset(path: Path):
    from datasets import Dataset

    from training.data import read_rows

    rows = read_rows(path)
    return Dataset.from_list(rows) if rows else None


def _sft_rows(path: Path):
    """``messages`` rows as conversational prompt/completion (loss on the answer only)."""
    from datasets import Dataset

    from training.data import read_rows

    rows = []
    for r in read_rows(path):
        msgs = r["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            continue
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return Dataset.from_list(rows) if rows else None


# -- the stages -------------------------------------------------------------------------------


def run(cfg: TrainConfig, tether_cfg: Any, *, stop_at: int | None = None, record: bool = True) -> TrainResult:
    """Train one stage; returns where the adapter is. ``stop_at`` (tests) interrupts after that step.

    Under ``accelerate launch`` every rank calls this; only the main process logs to ``train.log``,
    writes the loss curve, the adapter and ``run.yaml`` and records the job and the model, and every
    rank returns the same result once it is written.

    Raises:
        ConfigError / BackendUnavailable: bad config, missing model, empty dataset.
        KeyboardInterrupt: the run was stopped; the job is marked interrupted and rerunning resumes.
        MainProcessFailed: (ranks other than the main one) the main process failed to save or record.
    """
    from training.planner import detect_device, plan_for_model
    from training.registry import TrainingStore

    procs = processes(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    curve = out / "loss_curve.json"
    log_path = out / "train.log"
    lib_log = logging.getLogger("training")
    old_level = lib_log.level
    handler = None
    if procs.is_main:
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        lib_log.addHandler(handler)
        lib_log.setLevel(logging.INFO)
    store = TrainingStore.open(tether_cfg.db_path) if (record and procs.is_main) else None
    job_id = None
    try:
        base = resolve_base(cfg, tether_cfg.models_dir)
        from transformers import AutoConfig

        device = detect_device(cfg.device)
        if procs.distributed_type == "FSDP":
            # weights, gradients and optimizer states are sharded: let the planner see the cards together
            # (a rough bound: activations stay per card)
            device = replace(device, memory_gib=device.memory_gib * procs.world_size)
        plan = plan_for_model(AutoConfig.from_pretrained(base, local_files_only=True), cfg, device)
        log.info("plan: %s", "; ".join(plan.describe()))
        if procs.world_size > 1:
            log.info("%d processes (%s); the main process writes and records", procs.world_size, procs.distributed_type)
        manifest_path = Path(cfg.dataset) / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if store is not None:
            job_id = store.start_job(cfg.method, to_dict(cfg), str(out), str(log_path), cfg.max_steps)
        on_step = (lambda step, loss: store.update_job(job_id, step=step, loss=loss)) if store is not None else None
        callback = _loss_callback(curve, on_step, stop_at, cfg.max_minutes)
        t0 = time.perf_counter()
        trainer = _build_trainer(cfg, base, plan, ckpt_dir, callback)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout; LossCurve logs progress
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(ckpt_dir)) if (cfg.resume and ckpt_dir.is_dir()) else None
        if last:
            log.info("resuming from %s", last)
        result = trainer.train(resume_from_checkpoint=last)
        stage_dir = out / "adapter-stage"
        _save_adapter(trainer, stage_dir)  # every rank (FSDP gathers the shards); the main process writes
        adapter_dir = out / "adapter"
        steps = int(trainer.state.global_step)

        def finish() -> tuple[float, str | None, str | None]:
            """The main process: the final adapter, run.yaml, the registry row; the others wait."""
            if cfg.init_adapter:
                from training.adapters import stack_lora

                stack_lora(Path(cfg.init_adapter), stage_dir, adapter_dir)
            else:
                import shutil

                shutil.rmtree(adapter_dir, ignore_errors=True)
                shutil.copytree(stage_dir, adapter_dir)
            log.info("adapter saved to %s", adapter_dir)
            records = json.loads(curve.read_text())["records"] if curve.is_file() else []
            losses = [r["loss"] for r in records if "loss" in r]
            final = float(losses[-1]) if losses else float(result.training_loss)
            if not math.isfinite(final):
                raise TetherError(f"training diverged (loss {final}); lower --learning-rate")
            run_info = {
                "method": cfg.method,
                "config": to_dict(cfg),
                "base": str(base),
                "plan": _plan_summary(plan),
                "processes": {"world_size": procs.world_size, "distributed_type": procs.distributed_type},
                "dataset": manifest,
                "steps": steps,
                "stopped_at_max_minutes": bool(callback.out_of_time),
                "final_loss": final,
                "train_seconds": round(time.perf_counter() - t0, 2),
                "resumed_from": last,
                "versions": _versions(),
                "git_commit": git_commit(dirty=False),
            }
            import yaml

            (out / "run.yaml").write_text(yaml.safe_dump(run_info, sort_keys=False, allow_unicode=True))
            model_id = None
            if store is not None:
                model_id = store.register_adapter(
                    adapter_dir,
                    base=str(base),
                    method=cfg.method,
                    config=run_info,
                    manifest=manifest,
                    parent_adapter=cfg.init_adapter,
                    job_id=job_id,
                )
                store.finish_job(job_id, "done", model_id=model_id)
            log.info("%s done: %d steps, final loss %.4f, adapter %s", cfg.method, steps, final, adapter_dir)
            return final, job_id, model_id

        final, main_job, model_id = main_only(procs, finish)
        return TrainResult(
            out, adapter_dir, steps, final, curve, last, _plan_summary(plan), main_job, model_id, callback.out_of_time
        )
    except KeyboardInterrupt:
        if store is not None and job_id:
            store.finish_job(
                job_id, "interrupted", error="interrupted; rerun the same command to resume from the last checkpoint"
            )
        raise
    except BaseException as exc:
        if store is not None and job_id:
            store.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if handler is not None:
            lib_log.removeHandler(handler)
            lib_log.setLevel(old_level)
            handler.close()
        if store is not None:
            store.close()


def _save_adapter(trainer, stage_dir: Path) -> None:
    """The trained LoRA into ``stage_dir``, written once. Under FSDP the adapter's shards are first
    gathered into a full state dict, a collective every rank must join."""
    state_dict = None
    if trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.args.should_save:  # the main process (rank 0 of all machines)
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(str(stage_dir), state_dict=state_dict)


def _plan_summary(plan) -> dict[str, Any]:
    d = plan.to_json()
    d.pop("considered", None)
    return d


def _build_trainer(cfg: TrainConfig, base: Path, plan, ckpt_dir: Path, callback):
    """The trl trainer of ``cfg.method``: SFT, DPO or KTO, written out one by one."""
    from tether.errors import ConfigError

    tok = load_tokenizer(base)
    model = load_model(base, plan, init_adapter=cfg.init_adapter, device=cfg.device)
    args = common_args(cfg, plan, ckpt_dir)
    data = Path(cfg.dataset)
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        train = _sft_rows(data / "train.jsonl")
        if train is None:
            raise ConfigError(f"{data}/train.jsonl holds no SFT rows; build the dataset with `tether train data`")
        return SFTTrainer(
            model=model,
            args=SFTConfig(**args, completion_only_loss=True),
            train_dataset=train,
            processing_class=tok,
            peft_config=lora_config(cfg),
            callbacks=[callback],
        )
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        train = _dataset(data / "train.jsonl")
        if train is None:
            raise ConfigError(
                f"{data}/train.jsonl holds no DPO pairs; they need edited or thumbs-down feedback (or counterfactuals)"
            )
        # ref_model=None + peft_config: the reference is this model with the adapter disabled
        return DPOTrainer(
            model=model,
            ref_model=None,
            args=DPOConfig(**args, beta=cfg.beta),
            train_dataset=train,
            processing_class=tok,
            peft_config=lora_config(cfg),
            callbacks=[callback],
        )
    from trl import KTOConfig, KTOTrainer

    train = _dataset(data / "train.jsonl")
    if train is None:
        raise ConfigError(f"{data}/train.jsonl holds no KTO rows; they need thumbs-up or thumbs-down feedback")
    labels = set(train["label"])
    if labels != {True, False}:
        log.warning("KTO rows carry only label %s; KTO learns best from both thumbs", labels)
    return KTOTrainer(
        model=model,
        ref_model=None,
        args=KTOConfig(
            **args, beta=cfg.beta, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight
        ),
        train_dataset=train,
        processing_class=tok,
        peft_config=lora_config(cfg),
        callbacks=[callback],
    )
