"""Typed, frozen configs for the training stages, loaded from YAML and validated up front.

One file per run (``tether train sft --config training/configs/sft.yaml``)::

    # training/configs/sft.yaml
    base_model: smollm2            # 'smollm2' or a local checkpoint folder
    dataset: .tether/datasets/sft  # a folder written by `tether train data` (train.jsonl, eval.jsonl, manifest.json)
    output_dir: .tether/runs/sft-1
    max_steps: 40
    lora_r: 16

``load_train_config(path, method, defaults=cfg.training, **overrides)`` starts from the data dir's
defaults (the ``training:`` section of ``tether.yaml``, ``tether.config.TrainingConfig``), reads the
file, applies CLI overrides and raises one ``ConfigError`` that lists every problem, naming the YAML
key and the flag. Values are checked by the one coercer, ``tether.config.coerce``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tether.config import TrainingConfig, coerce, training_problems
from tether.errors import ConfigError

METHODS = ("sft", "dpo", "kto")
_SHARED = {f.name: f for f in fields(TrainingConfig)}


def _default(name: str) -> Any:
    """A TrainConfig field whose default and help are those of ``TrainingConfig.<name>``."""
    return field(default=_SHARED[name].default, metadata=_SHARED[name].metadata)


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')} / {key}"


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (SFT, DPO or KTO) with a LoRA adapter.

    Model: ``base_model``, ``init_adapter`` (a parent adapter, e.g. the SFT result under DPO: it is
    merged into the base in memory, so the base with the new adapter disabled is the reference).
    Data: ``dataset``, ``max_length``. Training: steps, rates, batch. Hardware: ``quantize``,
    ``gradient_checkpointing``, ``liger``, ``batch_size``/``grad_accum`` (0 = the planner decides).
    """

    method: str = field(default="sft", metadata={"help": "sft | dpo | kto"})
    base_model: str = _default("base_model")
    dataset: str = field(default="", metadata={"help": "dataset folder (train.jsonl, eval.jsonl, manifest.json)"})
    output_dir: str = field(
        default="", metadata={"help": "run folder: adapter/, checkpoints/, loss_curve.json, run.yaml"}
    )
    init_adapter: str | None = field(default=None, metadata={"help": "parent adapter merged into the base first"})
    lora_r: int = _default("lora_r")
    lora_alpha: int = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    target_modules: str = _default("target_modules")
    max_steps: int = _default("max_steps")
    learning_rate: float = _default("learning_rate")
    warmup_steps: int = _default("warmup_steps")
    batch_size: int = _default("batch_size")
    grad_accum: int = _default("grad_accum")
    max_length: int = _default("max_length")
    beta: float = _default("beta")
    desirable_weight: float = _default("desirable_weight")
    undesirable_weight: float = _default("undesirable_weight")
    save_steps: int = _default("save_steps")
    max_minutes: float = _default("max_minutes")
    save_total_limit: int = _default("save_total_limit")
    logging_steps: int = _default("logging_steps")
    seed: int = _default("seed")
    device: str = _default("device")
    quantize: str = _default("quantize")
    gradient_checkpointing: str = _default("gradient_checkpointing")
    liger: str = _default("liger")
    resume: bool = _default("resume")

    def problems(self) -> list[str]:
        out = []

        def bad(key: str, msg: str) -> None:
            out.append(f"{_flag(key)} ({getattr(self, key)!r}) {msg}")

        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if not self.dataset:
            bad("dataset", "must be a dataset folder: build one with `tether train data`")
        elif not (Path(self.dataset) / "train.jsonl").is_file():
            bad("dataset", "holds no train.jsonl: build it with `tether train data --out DIR`")
        if not self.output_dir:
            bad("output_dir", "must be set (the run folder)")
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            bad("init_adapter", "is not a PEFT adapter folder (adapter_config.json missing)")
        out.extend(training_problems(self, _flag))
        if self.method == "kto" and self.batch_size == 1:
            bad("batch_size", "must be >= 2 for KTO (its KL estimate pairs each row with another in the batch)")
        return out

    @property
    def target_modules_arg(self) -> str | list[str]:
        t = self.target_modules.strip()
        return t if t == "all-linear" else [m.strip() for m in t.split(",") if m.strip()]


def load_train_config(
    path: str | Path | None,
    method: str,
    *,
    for_plan: bool = False,
    defaults: TrainingConfig | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The config of one stage: ``defaults`` (the data dir's ``training:`` section; None = the
    built-in ones), then the YAML file (optional), then non-None ``overrides`` (CLI flags).
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
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    cfg = TrainConfig(**{**base, **coerce(TrainConfig, raw, problems, where=f"{where}: ")})
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

    out_dir: str = field(
        default="", metadata={"help": "folder receiving sft/, dpo/, kto/ (each train/eval JSONL + manifest)"}
    )
    kinds: str = field(default="sft,dpo,kto", metadata={"help": "comma-separated subset of sft, dpo, kto"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of prompts held out for eval"})
    max_tokens: int = field(
        default=1024, metadata={"help": "rows longer than this (prompt + answer, chat template) are dropped"}
    )
    near_dup_threshold: float = field(
        default=0.9, metadata={"help": "word-shingle Jaccard at or above which rows are near-duplicates"}
    )
    synthetic: int = field(
        default=0, metadata={"help": "SFT rows backtranslated from document chunks (needs an LLM generator)"}
    )
    counterfactuals: int = field(default=0, metadata={"help": "counterfactual SFT/DPO rows made from the corpus"})
    counterfactual_cases: str | None = field(
        default=None, metadata={"help": "JSONL of cases for assistant.counterfactual.load_cases"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "model whose tokenizer measures length ('smollm2' or a folder); none = chars/4"}
    )
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

    def validated(self) -> DataConfig:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self
