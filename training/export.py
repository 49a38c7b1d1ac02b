"""``tether export``: an adapter into servable artefacts, each registered with its parent.

    merged     the adapter merged into the base: plain safetensors + tokenizer (any transformers loader)
    bnb4       the merged model quantized to 4-bit nf4 by bitsandbytes (``save_pretrained`` of a 4-bit model)
    onnx       the merged model as ONNX (``torch.onnx.export``, opset 17, logits of the full sequence)
    onnx-int8  that ONNX graph with int8 weights (``onnxruntime.quantization.quantize_dynamic``), for CPU serving

ONNX is produced in Tether's own environment with ``torch.onnx.export`` + onnxruntime rather than
optimum-onnx, which pins transformers < 4.58 and would need a second environment (see
docs/TRAINING.md for the comparison). The exported graph has no KV cache: ``OnnxGenerator`` re-runs
the whole sequence for each new token, which is what a parity check needs and is fine for short
answers; serving long answers fast from ONNX would need the with-past export.

Every artefact folder carries ``tether-export.json`` (what it came from, how, and versions).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from assistant.generators.base import GeneratorIdentity, GenParams, Message
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

FORMATS = ("merged", "bnb4", "onnx", "onnx-int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"


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


class _LogitsOnly:
    """Wraps a causal LM so the traced graph maps (input_ids, attention_mask) -> logits, no cache."""

    @staticmethod
    def build(model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

        return Wrapper(model).eval()


def export_onnx(merged: Path, out: Path, *, opset: int = 17) -> Path:
    """``merged`` as ``out/model.onnx`` (+ tokenizer); dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        merged, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    )
    model.config.use_cache = False
    wrapper = _LogitsOnly.build(model)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.long)
    mask = torch.ones_like(ids)
    tmp = _fresh(Path(out))
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(tmp / ONNX_FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "logits": {0: "batch", 1: "seq"},
            },
            opset_version=opset,
            dynamo=False,
        )
    AutoTokenizer.from_pretrained(merged, local_files_only=True).save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    model.config.save_pretrained(tmp)
    _provenance(
        tmp,
        format="onnx",
        merged=str(merged),
        opset=opset,
        exporter="torch.onnx.export(dynamo=False)",
        seconds=round(time.perf_counter() - t0, 2),
    )
    return _commit(tmp, Path(out))


def quantize_int8(onnx_dir: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the ONNX graph's weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _fresh(Path(out))
    for f in Path(onnx_dir).iterdir():
        if (
            f.is_file()
            and not f.name.endswith(".onnx")
            and not f.name.endswith(".onnx.data")
            and f.name != "tether-export.json"
        ):
            shutil.copy2(f, tmp / f.name)
    quantize_dynamic(
        str(Path(onnx_dir) / ONNX_FILE), str(tmp / INT8_FILE), weight_type=QuantType.QInt8, per_channel=True
    )
    _provenance(
        tmp, format="onnx-int8", onnx=str(onnx_dir), quantization="onnxruntime quantize_dynamic QInt8 per-channel"
    )
    return _commit(tmp, Path(out))


class OnnxGenerator:
    """A ``Generator`` over an exported ONNX folder (fp32 or int8), greedy or sampled like the hf loop.
    No KV cache: every step re-runs the sequence (see the module docstring)."""

    def __init__(self, folder: Path, *, threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoTokenizer, GenerationConfig

        folder = Path(folder)
        path = folder / (INT8_FILE if (folder / INT8_FILE).is_file() else ONNX_FILE)
        if not path.is_file():
            raise BackendUnavailable(
                f"no {ONNX_FILE} or {INT8_FILE} in {folder}; export one with `tether export --formats onnx,onnx-int8`"
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []) | (
            {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        )
        self.identity = GeneratorIdentity(backend="onnx", model=str(path))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return list(
            self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    def logits(self, ids: Sequence[int]):
        import numpy as np

        arr = np.asarray([list(ids)], dtype=np.int64)
        return self.session.run(["logits"], {"input_ids": arr, "attention_mask": np.ones_like(arr)})[0][0]

    def tokens(self, prompt_ids: Sequence[int], params: GenParams) -> Iterator[int]:
        import numpy as np
        import torch

        from assistant.generators.hf import sample_token

        problems = params.problems()
        if problems:
            raise ConfigError(problems)
        rng = None
        if params.temperature > 0:
            rng = torch.Generator()
            rng.manual_seed(params.seed if params.seed is not None else 0)
        ids = list(prompt_ids)
        for _ in range(params.max_new_tokens):
            last = torch.from_numpy(np.ascontiguousarray(self.logits(ids)[-1:]).astype(np.float32))
            token = int(sample_token(last, params, rng).item())
            if token in self.eos_ids:
                return
            ids.append(token)
            yield token

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        ids = list(self.tokens(self.prompt_ids(messages), params))
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in params.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        if text:
            yield text


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
        paths["onnx"] = export_onnx(merged, out_dir / "onnx")
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
