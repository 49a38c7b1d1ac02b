"""The whole loop in one command (``tether train pipeline --config pipeline.yaml``):
datasets -> SFT -> DPO or KTO on top -> export + parity -> evaluation gate -> promote or refuse.

    # pipeline.yaml
    data:       {out_dir: .tether/datasets, kinds: "sft,kto", counterfactuals: 40}
    sft:        {base_model: smollm2, output_dir: .tether/runs/sft, max_steps: 30}
    preference: {method: kto, output_dir: .tether/runs/kto, max_steps: 20}    # or dpo; omit to stop after SFT
    export:     {out_dir: .tether/exports/latest, formats: "merged,onnx,onnx-int8"}   # optional
    promote:    {suite: examples/eval, force: false}                               # optional

Each stage's ``dataset`` / ``init_adapter`` is filled from the previous stage; everything else is
the stage's own config (``training.config``), validated before anything runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.config import TrainingConfig, coerce
from tether.errors import ConfigError, TetherError
from training.config import DataConfig, TrainConfig, load_train_config

log = logging.getLogger(__name__)

SECTIONS = ("data", "sft", "preference", "export", "promote")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig
    sft: TrainConfig
    preference: TrainConfig | None
    export_dir: str | None
    export_formats: str
    suite: str | None
    force: bool


def load_pipeline_config(path: str | Path, defaults: TrainingConfig | None = None) -> PipelineConfig:
    """Read and validate every section; one ConfigError lists all problems. ``defaults`` (the data
    dir's ``training:`` section) sit under the ``sft`` and ``preference`` sections."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold the sections {', '.join(SECTIONS)}")
    problems += [f"{p}: unknown section '{k}' (known: {', '.join(SECTIONS)})" for k in raw if k not in SECTIONS]
    for key in ("data", "sft"):
        if not isinstance(raw.get(key), dict):
            problems.append(f"{p}: section '{key}' is required (a mapping)")
    if problems:
        raise ConfigError(problems)
    data = DataConfig(**coerce(DataConfig, raw["data"], problems, where=f"{p}:data: "))
    problems += data.problems()
    out = Path(data.out_dir or ".")

    def stage(section: str, method: str, extra: dict[str, Any]) -> TrainConfig | None:
        body = {k: v for k, v in raw[section].items() if k != "method"}
        if "dataset" not in body and data.kind_list and method not in data.kind_list:
            problems.append(
                f"{section} trains {method} on {out / method}, which data.kinds ({data.kinds!r}) does not build: add {method}"
            )
        body.setdefault("dataset", str(out / method))
        if not body.get("output_dir"):
            problems.append(f"{section}.output_dir must be set (the run folder)")
        try:
            # datasets do not exist yet: check everything but the dataset folder now, the folder after building
            return load_train_config(None, method, for_plan=True, defaults=defaults, **{**body, **extra})
        except ConfigError as exc:
            problems.extend(f"{section}: {x}" for x in exc.problems)
            return None

    sft = stage("sft", "sft", {})
    pref = None
    if isinstance(raw.get("preference"), dict):
        method = raw["preference"].get("method", "kto")
        if method not in ("dpo", "kto"):
            problems.append(f"preference.method ({method!r}) must be dpo or kto")
        else:
            placeholder = {"init_adapter": None}  # filled with the SFT adapter at run time
            pref = stage("preference", method, placeholder)
    exp = raw.get("export") or {}
    prom = raw.get("promote") or {}
    if exp and not exp.get("out_dir"):
        problems.append("export.out_dir must be set")
    if prom and not prom.get("suite"):
        problems.append("promote.suite must be set (evaluation cases for the gate)")
    if problems:
        raise ConfigError(problems)
    return PipelineConfig(
        data,
        sft,
        pref,
        exp.get("out_dir"),
        str(exp.get("formats", "merged,onnx,onnx-int8")),
        prom.get("suite"),
        bool(prom.get("force", False)),
    )


def run_pipeline(
    cfg: Any, pc: PipelineConfig, *, generator: Any | None = None, tokenizer: Any | None = None
) -> dict[str, Any]:
    """Run every configured stage; returns a summary. A refused promotion is reported, not raised."""
    import dataclasses

    from training.data import build_datasets
    from training.registry import PromotionRefused, TrainingStore, promote
    from training.trainers import run

    with TrainingStore.open(cfg.db_path) as store:
        manifests = build_datasets(cfg, pc.data, generator=generator, tokenizer=tokenizer, record=store.record_dataset)
    summary: dict[str, Any] = {
        "datasets": {k: {"id": m.id, "train": m.n_train, "eval": m.n_eval} for k, m in manifests.items()}
    }

    def checked(tc: TrainConfig) -> TrainConfig:
        problems = tc.problems()
        if problems:
            raise ConfigError(problems)
        return tc

    sft = run(checked(pc.sft), cfg)
    summary["sft"] = {
        "adapter": str(sft.adapter_dir),
        "model_id": sft.model_id,
        "steps": sft.steps,
        "final_loss": sft.final_loss,
    }
    final = sft
    if pc.preference is not None:
        pref = run(checked(dataclasses.replace(pc.preference, init_adapter=str(sft.adapter_dir))), cfg)
        summary[pc.preference.method] = {
            "adapter": str(pref.adapter_dir),
            "model_id": pref.model_id,
            "steps": pref.steps,
            "final_loss": pref.final_loss,
        }
        final = pref
    if pc.export_dir:
        from training.export import export
        from training.trainers import resolve_base

        res = export(
            resolve_base(pc.sft, cfg.models_dir),
            final.adapter_dir,
            Path(pc.export_dir),
            formats=[f.strip() for f in pc.export_formats.split(",") if f.strip()],
            db_path=cfg.db_path,
            parent_id=final.model_id,
        )
        summary["export"] = {
            "paths": {k: str(v) for k, v in res.paths.items()},
            "ids": res.model_ids,
            "parity": {k: v["passed"] for k, v in (res.parity or {}).get("variants", {}).items()},
        }
        if res.parity is not None and not res.parity["passed"]:
            raise TetherError(f"parity check failed: {summary['export']['parity']}; see {pc.export_dir}/parity.json")
    if pc.suite:
        try:
            summary["promotion"] = {"promoted": True, **promote(cfg, final.model_id, pc.suite, force=pc.force)}
        except PromotionRefused as exc:
            summary["promotion"] = {
                "promoted": False,
                "model_id": final.model_id,
                "reason": str(exc),
                "gate": exc.gate.to_json() if hasattr(exc.gate, "to_json") else None,
            }
            log.warning("%s", exc)
    return summary
