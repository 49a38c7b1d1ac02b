"""``tether export``: an adapter into servable artefacts, each registered with its parent.

    merged     the adapter merged into the base: plain safetensors + tokenizer (any transformers loader)
    bnb4       the merged model quantized to 4-bit nf4 by bitsandbytes (``save_pretrained`` of a 4-bit model)
    onnx       the merged model as ONNX with its KV cache, in ``merged/onnx/``: the graph the ``hf``
               generator serves on ONNX Runtime (``assistant.generators.onnx_lm.export_graph``), so
               ``assistant.model: <out>/merged`` answers without torch (``hf.runtime: auto``)
    onnx-int8  that graph with int8 weights (``onnxruntime.quantization.quantize_dynamic``), for CPU serving

ONNX is produced in Tether's own environment with ``torch.onnx.export`` + onnxruntime rather than
optimum-onnx, which pins transformers < 4.58 and would need a second environment (see
docs/TRAINING.md for the comparison).

Every artefact folder carries ``tether-export.json`` (what it came from, how, and versions).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

FORMATS = ("merged", "bnb4", "onnx", "onnx-int8")


def _provenance(out: Path, **info) -> None:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "onnx", "onnxruntime", "bitsandbytes"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    (out / "tether-export.json").write_text(
        json.dumps(
            {**info, "versions": versions, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            indent=2,
            default=str,
        )
    )


def _fresh(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """Merge ``adapter`` into ``base`` (in the base's dtype) and save safetensors + tokenizer to ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = _fresh(Path(out))
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(tmp)
    _provenance(tmp, format="merged", base=str(base), adapter=str(adapter))
    return _commit(tmp, Path(out))


def save_bnb4(merged: Path, out: Path) -> Path:
    """The merged model quantized to nf4 (double quant) and saved; loads back as 4-bit by itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "the bnb4 export needs bitsandbytes: pip install 'tether[gpu]' (bitsandbytes==0.50.2)"
        ) from exc
    cuda = torch.cuda.is_available()
    compute = torch.bfloat16 if cuda else torch.float32
    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )
    model = AutoModelForCausalLM.from_pretrained(
        merged, local_files_only=True, quantization_config=q, device_map={"": 0 if cuda else "cpu"}
    )
    tmp = _fresh(Path(out))
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(merged, local_files_only=True).save_pretrained(tmp)
    _provenance(tmp, format="bnb4", merged=str(merged))
    return _commit(tmp, Path(out))


def quantize_int8(graph_dir: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the graph's weights (activations quantized at run time): ``out``
    holds ``model.onnx`` and the graph's manifest, so ``OnnxLM(checkpoint, graph_dir=out)`` serves it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from assistant.generators.onnx_lm import GRAPH_FILE, MANIFEST

    tmp = _fresh(Path(out))
    import onnx

    quantize_dynamic(
        str(Path(graph_dir) / GRAPH_FILE),
        str(tmp / GRAPH_FILE),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # the graph is saved optimized: shape inference cannot type the outputs of its fused
        # (com.microsoft) operators, which are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    info = json.loads((Path(graph_dir) / MANIFEST).read_text(encoding="utf-8"))
    info["quantization"] = "onnxruntime quantize_dynamic QInt8 per-channel"
    info.pop("parity", None)  # the int8 graph is checked by training.parity, within tolerance
    (tmp / MANIFEST).write_text(json.dumps(info, indent=1), encoding="utf-8")
    _provenance(tmp, format="onnx-int8", onnx=str(graph_dir), quantization=info["quantization"])
    return _commit(tmp, Path(out))


@dataclass(frozen=True)
class ExportResult:
    paths: dict[str, Path]
    model_ids: dict[str, str]
    parity: dict | None


def export(
    base: Path,
    adapter: Path,
    out_dir: Path,
    *,
    formats: Sequence[str] = ("merged", "onnx", "onnx-int8"),
    parity: bool = True,
    db_path: Path | None = None,
    parent_id: str | None = None,
    parity_tokens: int = 16,
) -> ExportResult:
    """Produce ``formats`` under ``out_dir/<format>/``, run the parity check against the adapter
    model, and register each artefact (parent = ``parent_id``) when ``db_path`` is given.

    Raises:
        ConfigError: unknown format. BackendUnavailable: bitsandbytes/onnxruntime missing.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"--formats {','.join(formats)}: unknown {', '.join(bad)} (known: {', '.join(FORMATS)})")
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    merged = out_dir / "merged"
    paths["merged"] = merge_adapter(Path(base), Path(adapter), merged)
    if "bnb4" in formats:
        paths["bnb4"] = save_bnb4(merged, out_dir / "bnb4")
    if "onnx" in formats or "onnx-int8" in formats:
        from assistant.generators.onnx_lm import export_graph

        paths["onnx"] = export_graph(merged)  # merged/onnx: the graph the hf generator serves
        if "onnx-int8" in formats:
            paths["onnx-int8"] = quantize_int8(paths["onnx"], out_dir / "onnx-int8")
    report = None
    if parity:
        from training.parity import check_parity

        report = check_parity(Path(base), Path(adapter), paths, max_new_tokens=parity_tokens)
        (out_dir / "parity.json").write_text(json.dumps(report, indent=2))
    ids: dict[str, str] = {}
    if db_path is not None:
        from training.registry import TrainingStore

        with TrainingStore.open(db_path) as store:
            for fmt, path in paths.items():
                if fmt not in formats and fmt != "merged":
                    continue
                ids[fmt] = store.register(
                    kind=fmt,
                    path=str(path.resolve()),
                    base=str(base),
                    adapter=str(adapter),
                    parent_id=parent_id,
                    config={"format": fmt, "parity": (report or {}).get("variants", {}).get(fmt)},
                )
    return ExportResult(paths, ids, report)
