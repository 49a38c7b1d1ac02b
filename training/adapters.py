"""LoRA adapter files: stacking a stage's adapter onto its parent as one adapter.

A DPO/KTO stage trains a fresh LoRA on top of the base with the SFT adapter merged in. The two
deltas add up: ``s1·B1·A1 + s2·B2·A2`` equals one LoRA of rank ``r1 + r2`` with
``B = [s1·B1 | s2·B2]``, ``A = [A1 ; A2]`` and scaling 1 — exactly, with no merge into the base. So
the engine and export always see a single adapter folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from tether.errors import TetherError

log = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"


def _scaling(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


def _check(cfg: dict, where: Path) -> None:
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if cfg.get(k)]
    if cfg.get("peft_type") != "LORA" or unsupported or cfg.get("bias", "none") != "none":
        raise TetherError(
            f"{where}: only plain LoRA adapters (no DoRA, bias, rank patterns or saved modules) can be stacked: {unsupported}"
        )


def stack_lora(parent: Path, child: Path, out: Path) -> Path:
    """Write ``out`` = ``parent`` + ``child`` as one LoRA adapter (rank r1 + r2). Modules that only
    one of them targets keep that one's factors (scaled into B)."""
    import torch
    from safetensors.torch import load_file, save_file

    parent, child, out = Path(parent), Path(child), Path(out)
    pc = json.loads((parent / "adapter_config.json").read_text())
    cc = json.loads((child / "adapter_config.json").read_text())
    _check(pc, parent)
    _check(cc, child)
    pw, cw = load_file(str(parent / WEIGHTS)), load_file(str(child / WEIGHTS))
    s1, s2 = _scaling(pc), _scaling(cc)
    r1, r2 = pc["r"], cc["r"]
    prefixes = {k[: -len(".lora_A.weight")] for k in list(pw) + list(cw) if k.endswith(".lora_A.weight")}
    merged = {}
    for p in sorted(prefixes):
        a_key, b_key = f"{p}.lora_A.weight", f"{p}.lora_B.weight"
        ref = pw.get(a_key) if a_key in pw else cw[a_key]
        ref_b = pw.get(b_key) if b_key in pw else cw[b_key]
        in_f, out_f, dtype = ref.shape[1], ref_b.shape[0], ref.dtype
        a1 = pw.get(a_key, torch.zeros(r1, in_f, dtype=dtype))
        b1 = pw.get(b_key, torch.zeros(out_f, r1, dtype=dtype)) * s1
        a2 = cw.get(a_key, torch.zeros(r2, in_f, dtype=dtype))
        b2 = cw.get(b_key, torch.zeros(out_f, r2, dtype=dtype)) * s2
        merged[a_key] = torch.cat([a1, a2], dim=0).contiguous()
        merged[b_key] = torch.cat([b1.to(dtype), b2.to(dtype)], dim=1).contiguous()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    targets = sorted(set(_as_list(pc["target_modules"])) | set(_as_list(cc["target_modules"])))
    cfg = {**cc, "r": r1 + r2, "lora_alpha": r1 + r2, "use_rslora": False, "target_modules": targets}
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    save_file(merged, str(tmp / WEIGHTS), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("stacked %s (r=%d) and %s (r=%d) into %s (r=%d)", parent, r1, child, r2, out, r1 + r2)
    return out


def _as_list(t) -> list[str]:
    return [t] if isinstance(t, str) else list(t)
