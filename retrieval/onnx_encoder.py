"""MiniLM (or any BERT-style sentence-transformers model) on ONNX Runtime: no torch on the hot path.

``export_encoder`` turns a local sentence-transformers folder into two ONNX graphs once, with
``torch.onnx.export`` (dynamo=False, opset 17) and ``onnxruntime.quantization.quantize_dynamic``
(int8, per-channel weights):

    <data dir>/models/encoders/<slug>/
        model.onnx          fp32, serves retrieval.embed_int8 = false
        model-int8.onnx     int8 per-channel dynamic quantization, serves retrieval.embed_int8 = true
        tokenizer.json      the model's tokenizer (the ``tokenizers`` library reads it)
        manifest.json       source model and its hashes, export settings, parity figures

Each graph ends in mean pooling over the attention mask and L2 normalisation, as the model's
sentence-transformers pipeline does, so it returns the sentence embedding. The export compares
both graphs with the sentence-transformers vectors of the same model over a fixed sample of
sentences and refuses to write anything when the mean cosine is below 0.99. The folder is built
beside its destination and renamed into place, so a reader sees the old export or the new one.

``OnnxEmbedder`` runs a graph with onnxruntime and ``tokenizers`` (importing them costs about
0.3 s, against about 9 s for sentence-transformers and torch). Torch and sentence-transformers are
imported only by the export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.clock import now_iso
from tether.errors import BackendUnavailable, TetherError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
MIN_PARITY_COSINE = 0.99
OPSET = 17

# A fixed sample for the parity check: handbook-like policy sentences, technical text, numbers,
# a long passage (truncated at the model's window) and a very short one.
PARITY_SENTENCES: tuple[str, ...] = (
    "Who approves business trips?",
    "Employees receive twenty working days of paid leave per calendar year.",
    "Travel outside the EU must be approved by the department head at least two weeks in advance.",
    "The reimbursement limit for meals is EUR 45 per day, receipts required.",
    "Superseded: this policy was replaced by the 2024 remote work guidelines.",
    "How do I configure a static IP address on Debian?",
    "apt-get install postgresql-15 installs the server; the cluster starts with pg_ctlcluster 15 main start.",
    "git rebase --onto main feature~3 feature moves the last three commits onto main.",
    "The kernel logs messages to the ring buffer, which dmesg prints.",
    "Set PermitRootLogin no in /etc/ssh/sshd_config and restart the ssh service.",
    "Remote work is allowed up to three days a week with your manager's agreement.",
    "A laptop is provided on the first day; return it within 5 days of leaving.",
    "What is the probation period?",
    "Bash arrays are zero-indexed; ${#arr[@]} gives the number of elements.",
    "VACUUM reclaims storage occupied by dead tuples.",
    "ok",
    " ".join(
        "The committee reviews every request for equipment, training and travel, and records its decision "
        "together with the budget line, the approver and the date of the next review."
        for _ in range(12)
    ),
)


# from this many batches on, embed_batch runs them side by side (a query or a short list stays in one session)
SIDE_BY_SIDE_MIN_BATCHES = 4


class EncoderExportError(TetherError):
    """The export failed its parity check, or the source model cannot be exported."""


@dataclass(frozen=True)
class Parity:
    """Cosine of one graph's vectors to the sentence-transformers fp32 vectors over the sample."""

    mean: float
    min: float
    mean_batched: float  # the same sample embedded in one padded batch
    n: int


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    manifest: dict[str, Any]
    seconds: float

    def lines(self) -> list[str]:
        p = self.manifest["parity"]
        return [
            f"encoder exported to {self.out_dir} in {self.seconds:.1f}s",
            f"  fp32 parity: mean cosine {p['fp32']['mean']:.5f} (min {p['fp32']['min']:.5f}) over {p['fp32']['n']} sentences",
            f"  int8 parity: mean cosine {p['int8']['mean']:.5f} (min {p['int8']['min']:.5f}); "
            f"to torch int8 vectors {p['int8_vs_torch_int8']['mean']:.5f}",
        ]


def encoder_slug(model: str) -> str:
    """The folder name of a model's export: the shipped name as is, a path as its name plus a hash."""
    from tether.config import DEFAULT_EMBED_MODEL

    if model in (DEFAULT_EMBED_MODEL, "sentence-transformers/" + DEFAULT_EMBED_MODEL, "minilm"):
        return DEFAULT_EMBED_MODEL
    path = Path(model).expanduser()
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.name or 'model'}-{digest}"


def encoder_dir(models_dir: Path, model: str) -> Path:
    return Path(models_dir) / "encoders" / encoder_slug(model)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise EncoderExportError(f"no model weights (*.safetensors or pytorch_model.bin) in {folder}")
    return files


def source_fingerprint(folder: Path) -> dict[str, Any]:
    """Cheap identity of the source weights (name, size, mtime), checked at every load."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in _weights(folder)}


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def usable_export(models_dir: Path, model: str, int8: bool) -> Path | None:
    """The ONNX file for (model, int8) when it was exported from the weights on disk now, else None."""
    from tether.crossencoder import resolve_model_path

    out = encoder_dir(models_dir, model)
    manifest = read_manifest(out)
    if manifest is None:
        return None
    onnx_file = out / (INT8_FILE if int8 else FP32_FILE)
    if not onnx_file.is_file() or not (out / TOKENIZER_FILE).is_file():
        return None
    try:
        fingerprint = source_fingerprint(resolve_model_path(model))
    except (TetherError, OSError):
        return None
    if manifest.get("source", {}).get("fingerprint") != fingerprint:
        log.warning("the ONNX encoder in %s was exported from other weights: rerun `tether models export-encoder`", out)
        return None
    return onnx_file


class OnnxEmbedder:
    """A sentence encoder on ONNX Runtime (CPU) with the model's own tokenizer.

    Same contract as ``SentenceTransformerEmbedder``: unit-length float32 vectors, texts sorted by
    length into batches of ``batch_size`` (so a batch is padded little), ``count_tokens`` without
    truncation for chunk sizing."""

    def __init__(self, onnx_file: Path, name: str, batch_size: int = 16, threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable(f"the ONNX encoder needs onnxruntime and tokenizers: {exc}") from exc
        folder = Path(onnx_file).parent
        manifest = read_manifest(folder) or {}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise BackendUnavailable(
                f"cannot load the ONNX encoder {onnx_file}: {exc}; rerun `tether models export-encoder`"
            ) from exc
        self.name = name
        self.onnx_file = Path(onnx_file)
        self.batch_size = batch_size
        self.max_tokens = int(manifest.get("max_seq_length", 256))
        self.dim = int(manifest.get("dim", self.session.get_outputs()[0].shape[-1]))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._counter = tokenizer
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        pad_id = int(manifest.get("pad_token_id", 0))
        tokenizer.enable_truncation(max_length=self.max_tokens)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=manifest.get("pad_token", "[PAD]"))
        self._tokenizer = tokenizer
        self._counter.no_truncation()
        self._counter.no_padding()
        self._lock = threading.Lock()
        self._each: list | None = None  # single-threaded sessions for embed_each, made on first use
        self.side_by_side_min = SIDE_BY_SIDE_MIN_BATCHES  # embed_batch: batches from which sessions run side by side

    def _run(self, texts: list[str]) -> np.ndarray:
        feeds = self._feeds(texts)
        with self._lock:
            (out,) = self.session.run(None, feeds)
        return np.asarray(out, dtype=np.float32)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Length-sorted batches of ``batch_size``; with more than a few batches (an ingest), they run
        side by side on one single-threaded session per core, as ``embed_each`` does: a small
        model's matrices are too small for intra-op threads to keep two cores busy."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(batches) < self.side_by_side_min or len(self._workers()) < 2:
            for idx in batches:
                out[idx] = self._run([texts[i] for i in idx])
            return out

        def work(session: Any, idx: list[int]) -> None:
            (vec,) = session.run(None, self._feeds([texts[i] for i in idx]))
            out[idx] = vec

        self._side_by_side(batches, work)  # sorted by length: every session gets long and short batches
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """One text, unpadded."""
        return self._run([text])[0]

    def embed_each(self, texts: Sequence[str]) -> np.ndarray:
        """Each text alone (unpadded, so its vector is ``embed_query``'s, whatever its neighbours), spread
        over one single-threaded session per core, run side by side: a one-text pass keeps one core
        busy only, so this is about twice as fast on 2 cores as calling ``embed_query`` in a loop."""
        texts = list(texts)
        if len(texts) < 8:
            return np.stack([self.embed_query(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)

        def work(session: Any, i: int) -> None:
            (vec,) = session.run(None, self._feeds([texts[i]]))
            out[i] = vec[0]

        self._side_by_side(range(len(texts)), work)
        return out

    def _side_by_side(self, jobs: Sequence[Any], work: Callable[[Any, Any], None]) -> None:
        """``work(session, job)`` for every job, the jobs dealt in turn to the single-threaded sessions
        of ``_workers``, one thread per session."""
        workers = self._workers()

        def run(w: int) -> None:
            for job in jobs[w :: len(workers)]:
                work(workers[w], job)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(workers), thread_name_prefix="onnx") as pool:
            list(pool.map(run, range(len(workers))))

    def _workers(self) -> list:
        """Single-threaded sessions over the same file, one per core (at most 4), made on first use."""
        with self._lock:
            if self._each is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.log_severity_level = 3
                opts.intra_op_num_threads = 1
                n = max(1, min(4, os.cpu_count() or 1))
                self._each = [
                    ort.InferenceSession(str(self.onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
                    for _ in range(n)
                ]
            return self._each

    def _feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds

    def count_tokens(self, text: str) -> list[int]:
        """Token ids of text (no special tokens), for chunk sizing; never truncates."""
        return self._counter.encode(text, add_special_tokens=False).ids


# --------------------------------------------------------------------------------------------------
# export (imports torch and sentence-transformers; run once, by `tether models export-encoder`)


def _parity(reference: np.ndarray, encoder: OnnxEmbedder, sentences: Sequence[str]) -> Parity:
    single = np.stack([encoder.embed_query(s) for s in sentences])
    batched = encoder._run(list(sentences))
    cos = np.sum(single * reference, axis=1)
    cos_batched = np.sum(batched * reference, axis=1)
    return Parity(
        mean=float(cos.mean()), min=float(cos.min()), mean_batched=float(cos_batched.mean()), n=len(sentences)
    )


def export_encoder(
    model: str,
    out_dir: Path,
    *,
    opset: int = OPSET,
    per_channel: bool = True,
    min_cosine: float = MIN_PARITY_COSINE,
    sentences: Sequence[str] = PARITY_SENTENCES,
) -> ExportReport:
    """Export ``model`` (a name ``resolve_model_path`` knows, or a local folder) to ``out_dir``.

    Raises ``EncoderExportError`` (and writes nothing) when either graph's mean cosine to the
    sentence-transformers vectors over ``sentences`` is below ``min_cosine``."""
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise EncoderExportError(
            f"exporting the encoder needs the onnx extra ({exc.name} is missing): pip install 'tether[onnx]'"
        ) from exc
    import torch

    from retrieval.embeddings import SentenceTransformerEmbedder
    from tether.crossencoder import resolve_model_path

    t0 = time.perf_counter()
    source = resolve_model_path(model)
    tokenizer_json = source / TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise EncoderExportError(f"{source} has no {TOKENIZER_FILE}: only fast-tokenizer models can be exported")
    reference_st = SentenceTransformerEmbedder(model, int8=False, device="cpu")
    st = reference_st.model
    pooling = st[1] if len(st) > 1 else None
    pool_cfg = pooling.get_config_dict() if pooling is not None and hasattr(pooling, "get_config_dict") else {}
    mean = pool_cfg.get("pooling_mode") == "mean" or pool_cfg.get("pooling_mode_mean_tokens") is True
    if pooling is None or not mean or type(pooling).__name__ != "Pooling":
        raise EncoderExportError(f"{model}: only mean-pooling sentence-transformers models can be exported")
    modules = [type(m).__name__ for m in st]
    if modules[2:] not in ([], ["Normalize"]):
        raise EncoderExportError(f"{model}: cannot export the modules {modules[2:]} after pooling")
    transformer = st[0].auto_model.eval()
    hf_tokenizer = st.tokenizer

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.body(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    reference = reference_st.embed_batch(list(sentences))
    torch_int8 = SentenceTransformerEmbedder(model, int8=True, device="cpu")
    reference_int8 = np.stack([torch_int8.embed_query(s) for s in sentences])

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the export is read by every user of the data dir
    try:
        shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
        sample = hf_tokenizer(
            ["a short one", "and a longer second sentence for the sample"], padding=True, return_tensors="pt"
        )
        args = (
            sample["input_ids"],
            sample["attention_mask"],
            sample.get("token_type_ids", torch.zeros_like(sample["input_ids"])),
        )
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
        axes["token_type_ids"] = {0: "batch", 1: "seq"}
        axes["sentence_embedding"] = {0: "batch"}
        # the tracer warns about shape checks it freezes; the parity check below covers every length
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                SentenceEmbedding(transformer),
                args,
                str(tmp / FP32_FILE),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp / FP32_FILE))
        quantize_dynamic(
            str(tmp / FP32_FILE), str(tmp / INT8_FILE), weight_type=QuantType.QInt8, per_channel=per_channel
        )
        manifest: dict[str, Any] = {
            "kind": "tether-onnx-encoder",
            "model": model,
            "dim": int(reference.shape[1]),
            "max_seq_length": int(st.max_seq_length),
            "pad_token": hf_tokenizer.pad_token or "[PAD]",
            "pad_token_id": int(hf_tokenizer.pad_token_id or 0),
            "source": {
                "path": str(source),
                "fingerprint": source_fingerprint(source),
                "sha256": {p.name: _sha256(p) for p in [*_weights(source), tokenizer_json]},
            },
            "export": {
                "exporter": "torch.onnx.export",
                "dynamo": False,
                "opset": opset,
                "pooling": "mean over attention mask, then L2 normalisation (in the graph)",
                "quantization": {
                    "method": "onnxruntime.quantization.quantize_dynamic",
                    "weight_type": "QInt8",
                    "per_channel": per_channel,
                },
                "versions": {
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                    "python": platform.python_version(),
                },
            },
            "files": {},
            "created_at": now_iso("seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        parity: dict[str, Any] = {"min_mean_cosine": min_cosine, "reference": "sentence-transformers fp32, normalised"}
        for key, file in (("fp32", FP32_FILE), ("int8", INT8_FILE)):
            enc = OnnxEmbedder(tmp / file, name=model, threads=None)
            parity[key] = asdict(_parity(reference, enc, sentences))
            if key == "int8":
                parity["int8_vs_torch_int8"] = asdict(_parity(reference_int8, enc, sentences))
            manifest["files"][file] = {"sha256": _sha256(tmp / file), "bytes": (tmp / file).stat().st_size}
        manifest["parity"] = parity
        failed = [
            k for k in ("fp32", "int8") if parity[k]["mean"] < min_cosine or parity[k]["mean_batched"] < min_cosine
        ]
        if failed:
            raise EncoderExportError(
                f"ONNX export of {model} failed its parity check: mean cosine to the sentence-transformers vectors "
                + ", ".join(f"{k} {parity[k]['mean']:.4f} (batched {parity[k]['mean_batched']:.4f})" for k in failed)
                + f" < {min_cosine}; nothing was written"
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(out_dir=out_dir, manifest=manifest, seconds=time.perf_counter() - t0)


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` onto ``dest``; an existing ``dest`` is moved aside first and removed after."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
