"""Typed, frozen configs for the training stages, loaded from YAML and validated up front.

One file per run (``tether train sft --config sft.yaml``)::

    # training/configs/sft.yaml
    base_model: smollm2            # 'smollm2' or a local checkpoint folder
    dataset: .tether/datasets/sft  # a folder written by `tether train data` (train.jsonl, eval.jsonl, manifest.json)
    output_dir: .tether/runs/sft-1
    max_steps: 40
    lora_r: 16

``load_train_config(path, method, **overrides)`` reads the file, applies CLI overrides and raises one
``ConfigError`` that lists every problem, naming the YAML key and the flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from tether.errors import ConfigError

METHODS = ("sft", "dpo", "kto")
QUANTIZE = ("auto", "none", "4bit")
DEVICES = ("auto", "cpu", "cuda")
TRISTATE = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (SFT, DPO or KTO) with a LoRA adapter.

    Model: ``base_model``, ``init_adapter`` (a parent adapter, e.g. the SFT result under DPO: it is
    merged into the base in memory, so the base with the new adapter disabled is the reference).
    Data: ``dataset``, ``max_length``. Training: steps, rates, batch. Hardware: ``quantize``,
    ``gradient_checkpointing``, ``liger``, ``batch_size``/``grad_accum`` (0 = the planner decides).
    """

    method: str = field(default="sft", metadata={"help": "sft | dpo | kto"})
    base_model: str = field(default="smollm2", metadata={"help": "'smollm2' or a local checkpoint folder"})
    dataset: str = field(default="", metadata={"help": "dataset folder (train.jsonl, eval.jsonl, manifest.json)"})
    output_dir: str = field(default="", metadata={"help": "run folder: adapter/, checkpoints/, loss_curve.json, run.yaml"})
    init_adapter: str | None = field(default=None, metadata={"help": "parent adapter merged into the base first"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: str = field(default="all-linear", metadata={"help": "'all-linear' or comma-separated module names"})
    max_steps: int = field(default=40, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (linear decay)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    batch_size: int = field(default=0, metadata={"help": "sequences per device step; 0 = planner"})
    grad_accum: int = field(default=0, metadata={"help": "gradient accumulation steps; 0 = planner"})
    max_length: int = field(default=1024, metadata={"help": "longest tokenized example (prompt + answer)"})
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO: KL strength against the reference"})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of thumbs-up rows"})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of thumbs-down rows"})
    save_steps: int = field(default=10, metadata={"help": "checkpoint every N steps (resume point)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    logging_steps: int = field(default=1, metadata={"help": "loss logged every N steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    quantize: str = field(default="auto", metadata={"help": "auto (planner) | none (bf16/fp32 LoRA) | 4bit (QLoRA, nf4)"})
    gradient_checkpointing: str = field(default="auto", metadata={"help": "auto (planner) | on | off"})
    liger: str = field(default="auto", metadata={"help": "Liger kernels: auto (on CUDA when installed) | on | off"})
    resume: bool = field(default=True, metadata={"help": "resume from the last checkpoint in output_dir when one exists"})

    def problems(self) -> list[str]:
        out = []

        def bad(key: str, msg: str) -> None:
            out.append(f"--{key.replace('_', '-')} / {key} ({getattr(self, key)!r}) {msg}")

        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if not self.base_model:
            bad("base_model", "must name 'smollm2' or a local checkpoint folder")
        if not self.dataset:
            bad("dataset", "must be a dataset folder: build one with `tether train data`")
        elif not (Path(self.dataset) / "train.jsonl").is_file():
            bad("dataset", "holds no train.jsonl: build it with `tether train data --out DIR`")
        if not self.output_dir:
            bad("output_dir", "must be set (the run folder)")
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            bad("init_adapter", "is not a PEFT adapter folder (adapter_config.json missing)")
        for key in ("lora_r", "lora_alpha", "max_steps", "max_length", "save_steps", "logging_steps", "save_total_limit"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in ("batch_size", "grad_accum", "warmup_steps"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0 (0 = let the planner decide)" if key != "warmup_steps" else "must be >= 0")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", "must be in [0, 1)")
        if not 0 < self.learning_rate < 1:
            bad("learning_rate", "must be in (0, 1)")
        if self.beta <= 0:
            bad("beta", "must be > 0")
        if self.device not in DEVICES:
            bad("device", f"must be one of {', '.join(DEVICES)}")
        if self.quantize not in QUANTIZE:
            bad("quantize", f"must be one of {', '.join(QUANTIZE)}")
        for key in ("gradient_checkpointing", "liger"):
            if getattr(self, key) not in TRISTATE:
                bad(key, f"must be one of {', '.join(TRISTATE)}")
        if self.method == "kto" and self.batch_size == 1:
            bad("batch_size", "must be >= 2 for KTO (its KL estimate pairs each row with another in the batch)")
        if not self.target_modules.strip():
            bad("target_modules", "must be 'all-linear' or module names")
        return out

    @property
    def target_modules_arg(self) -> str | list[str]:
        t = self.target_modules.strip()
        return t if t == "all-linear" else [m.strip() for m in t.split(",") if m.strip()]


def _coerce(cls: type, raw: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"{where}: {key} is not a known setting (known: {', '.join(sorted(known))})")
            continue
        default = known[key].default
        if value is None:
            kwargs[key] = None
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                problems.append(f"{where}: {key} must be true or false, got {value!r}")
                continue
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{where}: {key} must be an integer, got {value!r}")
                continue
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{where}: {key} must be a number, got {value!r}")
                continue
            value = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            problems.append(f"{where}: {key} must be a string, got {value!r}")
            continue
        kwargs[key] = value
    return kwargs


def load_train_config(path: str | Path | None, method: str, *, for_plan: bool = False, **overrides: Any) -> TrainConfig:
    """The config of one stage: YAML file (optional), then non-None ``overrides`` (CLI flags).
    ``for_plan``: only planning follows (``--plan``), so no dataset or output folder is needed.

    Raises:
        ConfigError: listing every problem (unknown keys, wrong types, invalid values).
    """
    import yaml

    problems: list[str] = []
    raw: dict[str, Any] = {}
    where = str(path) if path else "flags"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of settings (base_model: ..., dataset: ...)")
        raw = loaded
    if raw.get("method", method) != method:
        problems.append(f"{where}: method is {raw['method']!r} but the command is `tether train {method}`")
    raw = {**raw, "method": method, **{k: v for k, v in overrides.items() if v is not None}}
    kwargs = _coerce(TrainConfig, raw, where, problems)
    cfg = TrainConfig(**kwargs)
    problems.extend(p for p in cfg.problems() if not (for_plan and p.startswith(("--dataset", "--output-dir"))))
    if problems:
        raise ConfigError(problems)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a config dataclass (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


KINDS = ("sft", "dpo", "kto")


@dataclass(frozen=True)
class DataConfig:
    """What ``tether train data`` builds from the log database, the documents and counterfactuals."""

    out_dir: str = field(default="", metadata={"help": "folder receiving sft/, dpo/, kto/ (each train/eval JSONL + manifest)"})
    kinds: str = field(default="sft,dpo,kto", metadata={"help": "comma-separated subset of sft, dpo, kto"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of prompts held out for eval"})
    max_tokens: int = field(default=1024, metadata={"help": "rows longer than this (prompt + answer, chat template) are dropped"})
    near_dup_threshold: float = field(default=0.9, metadata={"help": "word-shingle Jaccard at or above which rows are near-duplicates"})
    synthetic: int = field(default=0, metadata={"help": "SFT rows backtranslated from document chunks (needs an LLM generator)"})
    counterfactuals: int = field(default=0, metadata={"help": "counterfactual SFT/DPO rows made from the corpus"})
    counterfactual_cases: str | None = field(default=None, metadata={"help": "JSONL of cases for training.counterfactual.load_cases"})
    tokenizer: str | None = field(default=None, metadata={"help": "model whose tokenizer measures length ('smollm2' or a folder); none = chars/4"})
    seed: int = field(default=0, metadata={"help": "split and sampling seed"})

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    def problems(self) -> list[str]:
        out = []
        if not self.out_dir:
            out.append("--out / out_dir must be set (the datasets folder)")
        bad = [k for k in self.kind_list if k not in KINDS]
        if bad or not self.kind_list:
            out.append(f"--kinds ({self.kinds!r}) must be a comma-separated subset of {', '.join(KINDS)}")
        if not 0 <= self.eval_fraction < 1:
            out.append(f"--eval-fraction ({self.eval_fraction}) must be in [0, 1)")
        if self.max_tokens < 16:
            out.append(f"--max-tokens ({self.max_tokens}) must be >= 16")
        if not 0 < self.near_dup_threshold <= 1:
            out.append(f"--near-dup ({self.near_dup_threshold}) must be in (0, 1]")
        if self.synthetic < 0 or self.counterfactuals < 0:
            out.append("--synthetic and --counterfactuals must be >= 0")
        if self.counterfactual_cases and not Path(self.counterfactual_cases).is_file():
            out.append(f"--counterfactual-cases ({self.counterfactual_cases}) does not exist")
        return out

    def validated(self) -> "DataConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self
