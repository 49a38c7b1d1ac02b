"""Typed, frozen configuration for every Tether stage, validated up front.

Resolution order for the data dir: ``--data-dir``, else ``$TETHER_HOME``, else ``./.tether``.
The config file is ``--config FILE`` or, when present, ``<data dir>/tether.yaml``; it holds one
mapping per section (``retrieval:``, ...). Environment variables override the file where noted
(``TETHER_CHROMA_URL``, ``TETHER_OPENAI_API_KEY``), and CLI flags override both.

Example ``tether.yaml``::

    retrieval:
      chunk_size: 200
      chunk_overlap: 30
      max_file_mb: 50
      chroma_url: http://127.0.0.1:8000   # use a Chroma server instead of the embedded store
    assistant:
      generator: openai
    openai:
      url: http://127.0.0.1:8000/v1        # any OpenAI-compatible server (tether serve, vLLM, ...)
      timeout_s: 30
    hf:
      device: cpu
      quantize: int8

Every section, with its defaults: ``training/configs/tether.yaml`` (a test keeps it loading). Every
value of every section (and of the training stage configs) passes through one coercer, ``coerce``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tether.errors import ConfigError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


ENCODERS = ("auto", "onnx", "torch")  # retrieval/embeddings.py: embedder_for


@dataclass(frozen=True)
class RetrievalConfig:
    """Ingestion, embedding, storage and search."""

    collection: str = field(
        default="tether", metadata={"help": "Chroma collection name (3-63 chars: letters, digits, . _ -)"}
    )
    embed_model: str = field(
        default=DEFAULT_EMBED_MODEL,
        metadata={"help": "sentence-transformers model: 'all-MiniLM-L6-v2' (shipped offline) or a local path"},
    )
    embed_batch_size: int = field(
        default=16, metadata={"help": "texts per embedding forward pass (sentence-transformers)"}
    )
    onnx_batch_size: int = field(
        default=4,
        metadata={
            "help": "texts per ONNX Runtime pass of the exported encoder: small batches pad less (4 was the fastest "
            "on 2 cores, docs/BENCHMARKS.md)"
        },
    )
    embed_int8: bool = field(
        default=True,
        metadata={
            "help": "int8 (per-channel) dynamic quantization of the embedder on the CPU: 2x faster, same recall (docs/BENCHMARKS.md)"
        },
    )
    encoder: str = field(
        default="auto",
        metadata={
            "help": "what runs the embedder: auto (ONNX Runtime on the CPU when `tether models export-encoder` has exported "
            "embed_model, else torch) | onnx (the export; an error when it is missing) | torch (sentence-transformers, CUDA when present)"
        },
    )
    chunk_size: int = field(default=200, metadata={"help": "chunk size in tokens of the embedder's tokenizer"})
    chunk_overlap: int = field(default=30, metadata={"help": "tokens shared by neighbouring chunks"})
    max_file_mb: float = field(default=50.0, metadata={"help": "files larger than this are skipped"})
    max_unzipped_mb: float = field(default=200.0, metadata={"help": "DOCX files that inflate beyond this are rejected"})
    max_zip_ratio: float = field(
        default=100.0, metadata={"help": "DOCX compression ratio above which a zip bomb is assumed"}
    )
    max_chunks_per_file: int = field(
        default=5000,
        metadata={
            "help": "a file that gives more chunks than this is skipped whole, with the reason (5000 chunks = about a 2,000-page book)"
        },
    )
    ingest_lock_timeout: float = field(
        default=600.0,
        metadata={
            "help": "seconds an ingest waits for another one on the same data dir to finish before refusing (0 = refuse at once)"
        },
    )
    chroma_url: str | None = field(
        default=None, metadata={"help": "http://host:port of a Chroma server; none = embedded"}
    )
    reranker: str | None = field(
        default=None,
        metadata={
            "help": "local folder of a sentence-transformers CrossEncoder that re-scores the fused candidates "
            "(`tether train reranker` trains one on the collection); unset: the one promoted for the collection, "
            "if any; 'off': none"
        },
    )
    rerank_top: int = field(default=20, metadata={"help": "fused candidates the reranker re-scores"})
    rerank_weight: float = field(
        default=0.3,
        metadata={
            "help": "1: the reranker's order alone; below 1: reciprocal rank fusion of the reranker's ranking "
            "(weight w) and the fused ranking (weight 1 - w); 0.3: best of 1, 0.5, 0.3 on the postgresql dev half "
            "(docs/BENCHMARKS.md)"
        },
    )
    rrf_k: int = field(
        default=20,
        metadata={
            "help": "reciprocal rank fusion constant (20: best or tied on the dev halves of three corpora, docs/BENCHMARKS.md)"
        },
    )
    candidates: int = field(default=50, metadata={"help": "candidates taken from each of dense and BM25 before fusion"})
    dense_weight: float = field(default=1.0, metadata={"help": "weight of the dense ranking in reciprocal rank fusion"})
    bm25_weight: float = field(default=1.0, metadata={"help": "weight of the BM25 ranking in reciprocal rank fusion"})
    page_weight: float = field(
        default=0.0,
        metadata={
            "help": "page-level fusion: weight of a chunk's page rank (pages scored by their best chunks) added to its fused score; 0 = off"
        },
    )
    page_chunks: int = field(
        default=2, metadata={"help": "page-level fusion: how many of a page's best chunks make its score"}
    )
    heading_prefix: bool = field(
        default=True,
        metadata={
            "help": "put each chunk's heading path (page > section > term) before its text for the embedder and BM25 (not in the cited text); recorded in the collection's identity, so changing it needs a new --collection"
        },
    )

    @property
    def reranker_path(self) -> str | None:
        """The reranker's folder, or None ('off', or unset with none promoted)."""
        return None if self.reranker in (None, "", "off") else self.reranker

    @property
    def embed_identity(self) -> str:
        """What a collection's vectors were made with; collections refuse a different one."""
        return self.embed_model + ("+int8" if self.embed_int8 else "") + ("+headings" if self.heading_prefix else "")

    def problems(self) -> list[str]:
        out = []
        if not _COLLECTION_RE.match(self.collection):
            out.append(
                f"--collection / retrieval.collection ({self.collection!r}) must be 3-63 characters of letters, "
                "digits, '.', '_' or '-', starting and ending with a letter or digit"
            )
        if self.chunk_size < 16:
            out.append(f"retrieval.chunk_size ({self.chunk_size}) must be >= 16 tokens")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            out.append(
                f"retrieval.chunk_overlap ({self.chunk_overlap}) must be >= 0 and < chunk_size ({self.chunk_size})"
            )
        if self.max_file_mb <= 0:
            out.append(f"--max-file-mb / retrieval.max_file_mb ({self.max_file_mb}) must be > 0")
        if self.encoder not in ENCODERS:
            out.append(f"retrieval.encoder ({self.encoder!r}) must be one of {', '.join(ENCODERS)}")
        if self.embed_batch_size < 1:
            out.append(f"retrieval.embed_batch_size ({self.embed_batch_size}) must be >= 1")
        if self.onnx_batch_size < 1:
            out.append(f"retrieval.onnx_batch_size ({self.onnx_batch_size}) must be >= 1")
        if not 1 <= self.max_chunks_per_file <= 1_000_000:
            out.append(f"retrieval.max_chunks_per_file ({self.max_chunks_per_file}) must be between 1 and 1000000")
        if not 0 <= self.ingest_lock_timeout <= 86_400:
            out.append(
                f"retrieval.ingest_lock_timeout ({self.ingest_lock_timeout}) must be between 0 and 86400 seconds"
            )
        for name in ("dense_weight", "bm25_weight", "page_weight"):
            if not 0 <= getattr(self, name) <= 10:
                out.append(f"retrieval.{name} ({getattr(self, name)}) must be between 0 and 10")
        if self.dense_weight + self.bm25_weight <= 0:
            out.append("retrieval.dense_weight and retrieval.bm25_weight must not both be 0")
        if not 0 < self.rerank_weight <= 1:
            out.append(f"retrieval.rerank_weight ({self.rerank_weight}) must be in (0, 1]")
        for name in ("rrf_k", "candidates", "rerank_top", "page_chunks"):
            if getattr(self, name) < 1:
                out.append(f"retrieval.{name} ({getattr(self, name)}) must be >= 1")
        if self.chroma_url and not re.match(r"^https?://[^/:]+(:\d+)?/?$", self.chroma_url):
            out.append(
                f"retrieval.chroma_url / TETHER_CHROMA_URL ({self.chroma_url!r}) must look like http://host:port"
            )
        return out


GENERATORS = ("hf", "extractive", "openai")
CONFLICT_POLICIES = ("prefer-recent", "prefer-official", "present-both")  # assistant/resolution.py
CAD_MODES = ("off", "on", "auto", "adaptive")


@dataclass(frozen=True)
class AssistantConfig:
    """The chat engine and its generator."""

    generator: str = field(default="hf", metadata={"help": "hf | extractive | openai"})
    model: str = field(default="smollm2", metadata={"help": "'smollm2' (shipped offline) or a local checkpoint dir"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter dir applied on top of the model"})
    top_k: int = field(default=5, metadata={"help": "passages retrieved per question"})
    max_new_tokens: int = field(default=160, metadata={"help": "longest generated answer, in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    llm_context: str = field(
        default="sentences",
        metadata={
            "help": "what the LLM sees: focused (the 3 best sentences overall) | sentences (3 per passage) | passages"
        },
    )
    faithful_prompt: bool = field(default=False, metadata={"help": "opinion-based framing that favours the context"})
    nli_model: str | None = field(default=None, metadata={"help": "local NLI cross-encoder for citation verification"})
    fallback_to_extractive: bool = field(
        default=True, metadata={"help": "answer extractively when the LLM cannot load"}
    )
    min_relevance: float = field(
        default=0.58,
        metadata={
            "help": "refuse without generating when no retrieved sentence scores this close to the question (cosine + 0.25 x shared words)"
        },
    )
    answerability: bool = field(
        default=True,
        metadata={
            "help": "refuse, with every generator, a question that asks for a number, a limit or a version when none "
            "of the answerability_depth sentences closest to it (or the two after each) states one (assistant/answerability.py)"
        },
    )
    answerability_depth: int = field(
        default=5, metadata={"help": "how many of the best-ranked sentences the answerability check reads"}
    )
    conflicts: bool = field(default=True, metadata={"help": "detect contradicting claims among the retrieved passages"})
    conflict_policy: str = field(
        default="prefer-official",
        metadata={
            "help": "prefer-official (superseded loses, then authority, then date) | prefer-recent | present-both"
        },
    )
    cad: str = field(
        default="off",
        metadata={
            "help": "context-aware decoding (hf only): off | on | auto (on when sources conflict or the answer is poorly "
            "grounded) | adaptive (AdaCAD: on for every answer, each step weighted by how much the model's memory "
            "disagrees with the sources)"
        },
    )
    cad_alpha: float = field(default=0.5, metadata={"help": "CAD strength: logits (1+a)*with context - a*without"})
    cad_min_groundedness: float = field(
        default=0.5, metadata={"help": "cad=auto: regenerate with CAD below this groundedness"}
    )
    guard: bool = field(
        default=True,
        metadata={
            "help": "replace an LLM reply that loops, cites nothing that verifies or invents a value by the extractive "
            "answer (evaluation runs turn it off to score the model's own replies)"
        },
    )
    consistency: bool = field(
        default=False,
        metadata={
            "help": "intra-memory check: also answer the question and two paraphrases without sources and compare"
        },
    )
    relevant_conflict: float = field(
        default=0.55,
        metadata={
            "help": "a conflict enters the answer when one of its claims scores this close to the question (cosine + 0.25 x shared words)"
        },
    )
    max_conflicts_stated: int = field(
        default=3,
        metadata={
            "help": "most conflicts the answer states (relevant ones, each pair of values once); the rest are in --json with stated: false"
        },
    )
    max_answer_chars: int = field(
        default=2000,
        metadata={
            "help": "longest answer text in characters; whole sentences past it are cut (the conflicts and sources stay in --json)"
        },
    )
    max_citations: int = field(
        default=8,
        metadata={"help": "most citations one answer carries; sentences that would cite more are left out"},
    )
    focus_margin: float = field(
        default=0.15,
        metadata={
            "help": "llm_context sentences: show the LLM the passages whose best sentence scores within this of the best one"
        },
    )
    refusal_markers: tuple[str, ...] = field(
        default=(
            "i don't know",
            "i do not know",
            "do not say",
            "don't say",
            "not contain",
            "no information",
            "cannot find",
            "could not find",
        ),
        metadata={"help": "an LLM reply containing one of these phrases (case-insensitive) counts as a refusal"},
    )

    def problems(self) -> list[str]:
        out = []
        if self.generator not in GENERATORS:
            out.append(f"--generator / assistant.generator ({self.generator!r}) must be one of {', '.join(GENERATORS)}")
        if not 1 <= self.top_k <= 50:
            out.append(f"-k / assistant.top_k ({self.top_k}) must be between 1 and 50")
        if self.max_new_tokens < 1:
            out.append(f"assistant.max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if self.temperature < 0:
            out.append(f"assistant.temperature ({self.temperature}) must be >= 0")
        if self.llm_context not in ("focused", "sentences", "passages"):
            out.append(f"assistant.llm_context ({self.llm_context!r}) must be 'focused', 'sentences' or 'passages'")
        if not 0 <= self.min_relevance <= 2:
            out.append(
                f"assistant.min_relevance ({self.min_relevance}) must be between 0 and 2 (0 = never refuse for low relevance)"
            )
        if not 1 <= self.answerability_depth <= 50:
            out.append(f"assistant.answerability_depth ({self.answerability_depth}) must be between 1 and 50")
        if self.conflict_policy not in CONFLICT_POLICIES:
            out.append(
                f"--policy / assistant.conflict_policy ({self.conflict_policy!r}) must be one of {', '.join(CONFLICT_POLICIES)}"
            )
        if self.cad not in CAD_MODES:
            out.append(f"--cad / assistant.cad ({self.cad!r}) must be one of {', '.join(CAD_MODES)}")
        if not 0 < self.cad_alpha <= 5:
            out.append(
                f"assistant.cad_alpha ({self.cad_alpha}) must be in (0, 5]; turn CAD off with assistant.cad: off"
            )
        if not 0 <= self.cad_min_groundedness <= 1:
            out.append(f"assistant.cad_min_groundedness ({self.cad_min_groundedness}) must be between 0 and 1")
        if not 0 <= self.relevant_conflict <= 2:
            out.append(
                f"assistant.relevant_conflict ({self.relevant_conflict}) must be between 0 and 2 (0 = every conflict enters the answer)"
            )
        if not 0 <= self.max_conflicts_stated <= 50:
            out.append(
                f"assistant.max_conflicts_stated ({self.max_conflicts_stated}) must be between 0 and 50 (0 = state none)"
            )
        if not 200 <= self.max_answer_chars <= 100_000:
            out.append(f"assistant.max_answer_chars ({self.max_answer_chars}) must be between 200 and 100000")
        if not 1 <= self.max_citations <= 100:
            out.append(f"assistant.max_citations ({self.max_citations}) must be between 1 and 100")
        if not 0 <= self.focus_margin <= 2:
            out.append(
                f"assistant.focus_margin ({self.focus_margin}) must be between 0 and 2 (2 = show the LLM every passage)"
            )
        if not all(isinstance(m, str) and m.strip() for m in self.refusal_markers):
            out.append(f"assistant.refusal_markers ({list(self.refusal_markers)!r}) must be non-empty phrases")
        return out


HF_DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
HF_DTYPES = ("auto", "float32", "bfloat16", "float16")
HF_CACHES = ("auto", "dynamic", "static")
HF_QUANTIZE = ("none", "int8", "quanto-int8", "quanto-int4")
HF_RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class HFConfig:
    """How the ``hf`` generator loads and decodes its model (``assistant/generators/hf.py``)."""

    runtime: str = field(
        default="auto",
        metadata={
            "help": "what runs the model: auto (ONNX Runtime on the CPU when `tether models export-generator` has "
            "exported it and nothing below needs torch: no adapter, quantize none, no 4-bit, restrict_numbers off, "
            "no CUDA; else torch) | onnx (the export; an error when it cannot serve) | torch (transformers)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bfloat16 on a CUDA GPU that supports it, else float32) | float32 | bfloat16 | float16"
        },
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "none | int8 (torch dynamic int8 Linear layers; CPU only, no adapter) | quanto-int8 | quanto-int4 "
            "(optimum-quanto weights, the LM head kept; an adapter is merged first; pip install 'tether[quantize]')"
        },
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "NF4 weights via bitsandbytes, bf16 compute (CUDA only)"}
    )
    compile: bool | str = field(
        default="auto",
        metadata={"help": "compile the decode step (torch.compile, CUDA graphs): auto (on CUDA only) | true | false"},
    )
    cache: str = field(
        default="auto", metadata={"help": "KV cache: auto (static when compiling, else dynamic) | dynamic | static"}
    )
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "reuse the KV cache of the prompt prefix shared with the previous turn (dynamic cache only)"},
    )
    cad_batched: bool | None = field(
        default=None,
        metadata={"help": "decode CAD's two rows in one batched forward: null (on CUDA only) | true | false"},
    )
    no_repeat_ngram: int = field(
        default=6,
        metadata={
            "help": "no n-gram of this many tokens twice in a reply (the reply's own tokens, not the prompt's: "
            "quoting a source stays possible); stops a small model's loops; 0 = off"
        },
    )
    restrict_numbers: bool = field(
        default=False,
        metadata={
            "help": "the reply may state only numbers (amounts, limits, dates) that the selected sources state; "
            "a citation [n] is not a value"
        },
    )

    def torch_only(self) -> list[str]:
        """The settings only the torch runtime serves (``runtime: auto`` picks torch for them)."""
        out = []
        if self.device.split(":")[0] == "cuda":
            out.append(f"hf.device {self.device} (ONNX Runtime runs the model on the CPU here)")
        if self.dtype not in ("auto", "float32"):
            out.append(f"hf.dtype {self.dtype} (the export is float32)")
        if self.quantize != "none":
            out.append(f"hf.quantize {self.quantize}")
        if self.load_in_4bit:
            out.append("hf.load_in_4bit")
        if self.compile is True or self.cache == "static":
            out.append("hf.compile true / hf.cache static")
        if self.restrict_numbers:
            out.append("hf.restrict_numbers")
        return out

    def problems(self) -> list[str]:
        out = []
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            out.append(f"hf.no_repeat_ngram ({self.no_repeat_ngram}) must be 0 (off) or >= 2")
        device = self.device.split(":")[0]
        if device not in HF_DEVICES or (":" in self.device and not (device == "cuda" and self.device[5:].isdigit())):
            out.append(f"hf.device ({self.device!r}) must be one of {', '.join(HF_DEVICES)} (or cuda:N)")
        if self.dtype not in HF_DTYPES:
            out.append(f"hf.dtype ({self.dtype!r}) must be one of {', '.join(HF_DTYPES)}")
        if self.quantize not in HF_QUANTIZE:
            out.append(f"hf.quantize ({self.quantize!r}) must be one of {', '.join(HF_QUANTIZE)}")
        if self.cache not in HF_CACHES:
            out.append(f"hf.cache ({self.cache!r}) must be one of {', '.join(HF_CACHES)}")
        if self.runtime not in HF_RUNTIMES:
            out.append(f"hf.runtime ({self.runtime!r}) must be one of {', '.join(HF_RUNTIMES)}")
        if self.runtime == "onnx":
            out += [f"hf.runtime onnx: {why}" for why in self.torch_only()]
        if self.compile not in ("auto", True, False):
            out.append(f"hf.compile ({self.compile!r}) must be auto, true or false")
        if self.quantize == "int8" and (device == "cuda" or self.load_in_4bit):
            out.append(
                "hf.quantize int8 is for the CPU without 4-bit: set hf.device: cpu and hf.load_in_4bit: false, or hf.quantize: none"
            )
        if self.quantize.startswith("quanto-") and self.load_in_4bit:
            out.append(f"hf.quantize {self.quantize} and hf.load_in_4bit are two quantizations: keep one")
        if self.load_in_4bit and device == "cpu":
            out.append("hf.load_in_4bit needs a CUDA GPU (bitsandbytes NF4): drop it, or set hf.device: auto or cuda")
        if self.compile is True and self.cache == "dynamic":
            out.append("hf.compile true needs hf.cache static (or auto)")
        return out


@dataclass(frozen=True)
class OpenAIConfig:
    """The ``openai`` generator: any OpenAI-compatible server (``assistant/generators/openai_compat.py``)."""

    url: str | None = field(default=None, metadata={"help": "base URL of the server, e.g. http://127.0.0.1:8000/v1"})
    model: str = field(
        default="tether", metadata={"help": "model name sent to that server (one it lists at /v1/models)"}
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "sent as Authorization: Bearer; $TETHER_OPENAI_API_KEY overrides it, $OPENAI_API_KEY is the fallback",
            "secret": True,
        },
    )
    timeout_s: float = field(
        default=60.0, metadata={"help": "seconds to wait for any byte of a reply before the attempt fails"}
    )
    max_retries: int = field(
        default=2,
        metadata={
            "help": "extra attempts after a connection error, a timeout or HTTP 408/409/429/5xx (the openai client's own)"
        },
    )

    def with_env(self, environ: Mapping[str, str] | None = None) -> OpenAIConfig:
        """A copy with the API key from the environment: ``TETHER_OPENAI_API_KEY`` overrides the file,
        ``OPENAI_API_KEY`` is used only when neither sets one."""
        env = os.environ if environ is None else environ
        key = env.get("TETHER_OPENAI_API_KEY") or self.api_key or env.get("OPENAI_API_KEY") or None
        return self if key == self.api_key else dataclasses.replace(self, api_key=key)

    def problems(self) -> list[str]:
        out = []
        if self.url is not None and not re.match(r"^https?://[^/:\s]+(:\d{1,5})?(/\S*)?$", self.url):
            out.append(f"openai.url ({self.url!r}) must look like http://host:port/v1")
        if not self.model:
            out.append("openai.model must not be empty")
        if not self.timeout_s > 0:
            out.append(f"openai.timeout_s ({self.timeout_s}) must be > 0")
        if not 0 <= self.max_retries <= 10:
            out.append(f"openai.max_retries ({self.max_retries}) must be between 0 and 10")
        return out


_COSINES = (
    "pair_similarity",
    "lone_term_similarity",
    "unanchored_similarity",
    "approver_similarity",
    "role_similarity",
    "strong_similarity",
    "polarity_similarity",
    "same_document_similarity",
)


@dataclass(frozen=True)
class ConflictsConfig:
    """Inter-context conflict detection (``retrieval/conflicts/``, docs/CONFLICTS.md).

    Subject gate: a rule hit counts only when the two claims share key terms and their MiniLM vectors
    are at least this similar (cosines). Claims: what counts as one and how many per call. NLI: the
    optional cross-encoder named by ``assistant.nli_model``. Classifier: the contradiction classifier
    ``tether train detector`` trains (used once promoted, or when named here). Every field can also be passed to
    ``RuleConflictDetector(embedder, **fields)``.
    """

    pair_similarity: float = field(
        default=0.45, metadata={"help": "cosine above which two claims sharing key terms are on one subject"}
    )
    lone_term_similarity: float = field(
        default=0.5, metadata={"help": "the cosine needed when the claims share only one key term"}
    )
    unanchored_similarity: float = field(
        default=0.6,
        metadata={"help": "... and when, besides, the two values share no rate, counted noun or attribute word"},
    )
    approver_similarity: float = field(
        default=0.65, metadata={"help": "'approved by X' is generic: the cosine needed for approver claims"}
    )
    role_similarity: float = field(
        default=0.3,
        metadata={"help": "enough when both claims name a holder for the same role ('the DPO is X')"},
    )
    strong_similarity: float = field(
        default=0.8, metadata={"help": "above this, claims sharing key terms are on one subject whatever the rule"}
    )
    polarity_similarity: float = field(
        default=0.55, metadata={"help": "polarity rules are the least precise: the cosine they need"}
    )
    same_document_similarity: float = field(
        default=0.9, metadata={"help": "claims of one document are compared only above this cosine"}
    )
    min_shared_terms: int = field(
        default=1, metadata={"help": "key terms (content words, not values) both claims must contain"}
    )
    min_claim_words: int = field(
        default=4, metadata={"help": "shorter sentences (headings, list stubs) are not claims"}
    )
    max_claims: int = field(
        default=400, metadata={"help": "claims considered per detect call (the first ones, in passage order)"}
    )
    cache_size: int = field(default=4096, metadata={"help": "sentence vectors kept in the LRU"})
    vectors_at_ingest: bool = field(
        default=False,
        metadata={
            "help": "embed every claim a rule can flag when its document is ingested, so even the first detection "
            "on a passage needs no embedding pass (ingest takes about 1.8x as long: docs/BENCHMARKS.md); off, "
            "the vectors the detector embeds are kept in tether.db instead, so only that first detection embeds"
        },
    )
    max_value_ratio: float = field(
        default=4.0,
        metadata={
            "help": "two values of one attribute rarely differ by more than this factor; larger gaps are different attributes"
        },
    )
    contradiction_threshold: float = field(
        default=0.8,
        metadata={
            "help": "NLI: P(contradiction), in either order, at which an unflagged pair on one subject is a conflict"
        },
    )
    nli_max_pairs: int = field(
        default=24, metadata={"help": "NLI: most claim pairs (most similar first) the cross-encoder scores per call"}
    )
    classifier: str | None = field(
        default=None,
        metadata={
            "help": "local folder of a contradiction classifier (tether train detector); unset: the promoted one, if any"
        },
    )
    classifier_threshold: float | None = field(
        default=None,
        metadata={"help": "classifier: P(contradiction) that flags a pair; unset: the one its training chose on dev"},
    )

    def problems(self) -> list[str]:
        out = []
        for name in _COSINES:
            v = getattr(self, name)
            if not -1.0 <= v <= 1.0:
                out.append(f"conflicts.{name} ({v}) must be a cosine between -1 and 1")
        for name in ("min_claim_words", "max_claims", "cache_size"):
            if getattr(self, name) < 1:
                out.append(f"conflicts.{name} ({getattr(self, name)}) must be >= 1")
        for name in ("min_shared_terms", "nli_max_pairs"):
            if getattr(self, name) < 0:
                out.append(f"conflicts.{name} ({getattr(self, name)}) must be >= 0")
        if not self.max_value_ratio > 1:
            out.append(f"conflicts.max_value_ratio ({self.max_value_ratio}) must be > 1")
        if not 0.0 < self.contradiction_threshold <= 1.0:
            out.append(f"conflicts.contradiction_threshold ({self.contradiction_threshold}) must be in (0, 1]")
        if self.classifier_threshold is not None and not 0.0 < self.classifier_threshold <= 1.0:
            out.append(f"conflicts.classifier_threshold ({self.classifier_threshold}) must be in (0, 1]")
        return out


@dataclass(frozen=True)
class ExtractiveSection:
    """The extractive answerer (``assistant/generators/extractive.py``: no LLM, cites passage
    sentences). Its refusal threshold is ``assistant.min_relevance``, shared with the engine."""

    max_sentences: int = field(default=3, metadata={"help": "most passage sentences in one answer"})
    keep_ratio: float = field(
        default=0.8, metadata={"help": "sentences after the best must score at least this share of its relevance"}
    )
    mmr_lambda: float = field(
        default=0.7,
        metadata={
            "help": "MMR trade-off: 1 = relevance only, lower = penalise sentences similar to those already chosen"
        },
    )

    def problems(self) -> list[str]:
        out = []
        if self.max_sentences < 1:
            out.append(f"extractive.max_sentences ({self.max_sentences}) must be >= 1")
        if not 0 <= self.keep_ratio <= 1:
            out.append(f"extractive.keep_ratio ({self.keep_ratio}) must be between 0 and 1")
        if not 0 <= self.mmr_lambda <= 1:
            out.append(f"extractive.mmr_lambda ({self.mmr_lambda}) must be between 0 and 1")
        return out


TRAIN_DEVICES = ("auto", "cpu", "cuda")
TRAIN_QUANTIZE = ("auto", "none", "4bit")
TRISTATE = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainingConfig:
    """Defaults of ``tether train sft|dpo|kto`` for this data dir (model, LoRA, schedule, hardware).

    These are the fields of ``training.config.TrainConfig`` that do not name one run (``method``,
    ``dataset``, ``output_dir``, ``init_adapter`` do); TrainConfig takes its defaults and help from
    here. Per key: flag > the run's ``--config`` file > this section > the default below.
    """

    base_model: str = field(default="smollm2", metadata={"help": "'smollm2' or a local checkpoint folder"})
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
    max_minutes: float = field(
        default=0.0,
        metadata={"help": "stop (checkpointed, adapter saved) after this many minutes of training; 0 = no limit"},
    )
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    logging_steps: int = field(default=1, metadata={"help": "loss logged every N steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    quantize: str = field(
        default="auto", metadata={"help": "auto (planner) | none (bf16/fp32 LoRA) | 4bit (QLoRA, nf4)"}
    )
    gradient_checkpointing: str = field(default="auto", metadata={"help": "auto (planner) | on | off"})
    liger: str = field(default="auto", metadata={"help": "Liger kernels: auto (on CUDA when installed) | on | off"})
    resume: bool = field(
        default=True, metadata={"help": "resume from the last checkpoint in output_dir when one exists"}
    )

    def problems(self) -> list[str]:
        return training_problems(self, lambda key: f"training.{key}")


def training_problems(cfg: Any, label: Any) -> list[str]:
    """The checks of the ``TrainingConfig`` fields of ``cfg`` (a TrainingConfig or a TrainConfig);
    ``label(key)`` names the setting in each message (``training.lora_r``, ``--lora-r / lora_r``)."""
    out = []

    def bad(key: str, msg: str) -> None:
        out.append(f"{label(key)} ({getattr(cfg, key)!r}) {msg}")

    if not cfg.base_model:
        bad("base_model", "must name 'smollm2' or a local checkpoint folder")
    for key in ("lora_r", "lora_alpha", "max_steps", "max_length", "save_steps", "logging_steps", "save_total_limit"):
        if getattr(cfg, key) < 1:
            bad(key, "must be >= 1")
    for key in ("batch_size", "grad_accum", "warmup_steps"):
        if getattr(cfg, key) < 0:
            bad(key, "must be >= 0 (0 = let the planner decide)" if key != "warmup_steps" else "must be >= 0")
    if not 0 <= cfg.max_minutes < 10_000:
        bad("max_minutes", "must be in [0, 10000) (0 = no limit)")
    if not 0 <= cfg.lora_dropout < 1:
        bad("lora_dropout", "must be in [0, 1)")
    if not 0 < cfg.learning_rate < 1:
        bad("learning_rate", "must be in (0, 1)")
    if cfg.beta <= 0:
        bad("beta", "must be > 0")
    if cfg.device not in TRAIN_DEVICES:
        bad("device", f"must be one of {', '.join(TRAIN_DEVICES)}")
    if cfg.quantize not in TRAIN_QUANTIZE:
        bad("quantize", f"must be one of {', '.join(TRAIN_QUANTIZE)}")
    for key in ("gradient_checkpointing", "liger"):
        if getattr(cfg, key) not in TRISTATE:
            bad(key, f"must be one of {', '.join(TRISTATE)}")
    if not cfg.target_modules.strip():
        bad("target_modules", "must be 'all-linear' or module names")
    return out


@dataclass(frozen=True)
class TetherConfig:
    """The whole configuration. Sections are added by the stages that need them."""

    data_dir: Path
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    conflicts: ConflictsConfig = field(default_factory=ConflictsConfig)
    extractive: ExtractiveSection = field(default_factory=ExtractiveSection)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tether.db"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def bm25_dir(self) -> Path:
        return self.data_dir / "bm25"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def cross_problems(self) -> list[str]:
        """Problems that span sections (each section's own ``problems()`` checks the rest)."""
        out = []
        if self.assistant.generator == "openai" and not self.openai.url:
            out.append(
                "--generator / assistant.generator is 'openai' but openai.url is not set (e.g. http://127.0.0.1:8000/v1)"
            )
        return out

    def with_assistant(self, **changes: Any) -> TetherConfig:
        """A copy with some assistant fields changed, validated again."""
        cfg = dataclasses.replace(self, assistant=dataclasses.replace(self.assistant, **changes))
        problems = cfg.assistant.problems() + cfg.cross_problems()
        if problems:
            raise ConfigError(problems)
        return cfg

    def with_retrieval(self, **changes: Any) -> TetherConfig:
        """A copy with some retrieval fields changed, validated again."""
        cfg = dataclasses.replace(self, retrieval=dataclasses.replace(self.retrieval, **changes))
        problems = cfg.retrieval.problems()
        if problems:
            raise ConfigError(problems)
        return cfg


# every section of tether.yaml: its name there, which is also the TetherConfig field holding it
_SECTIONS: dict[str, type] = {
    "retrieval": RetrievalConfig,
    "conflicts": ConflictsConfig,
    "assistant": AssistantConfig,
    "hf": HFConfig,
    "openai": OpenAIConfig,
    "extractive": ExtractiveSection,
    "training": TrainingConfig,
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("TETHER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / ".tether").resolve()


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce_value(tp: Any, value: Any) -> tuple[Any, str | None]:
    """``value`` checked against the annotation ``tp`` (and converted: int -> float, number -> str,
    list -> tuple); ``(value, None)`` or ``(value, why not)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (None, None) if type(None) in args else (value, "null")
        for arg in (a for a in args if a is not type(None)):
            out, err = _coerce_value(arg, value)
            if err is None:
                return out, None
        return value, "wrong type"
    if value is None:
        return value, "null"
    if tp is Any:
        return value, None
    if tp is bool:
        return (value, None) if isinstance(value, bool) else (value, "wrong type")
    if tp is int:
        return (value, None) if isinstance(value, int) and not isinstance(value, bool) else (value, "wrong type")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, "wrong type"
        return (float(value), None) if math.isfinite(value) else (value, "not finite")
    if tp is str:
        if isinstance(value, bool):
            return value, "yaml bool"
        if isinstance(value, (int, float)):
            return str(value), None  # base_model: 7 -> "7"; a string field never holds a number
        return (value, None) if isinstance(value, str) else (value, "wrong type")
    if tp is Path:
        return (Path(value), None) if isinstance(value, (str, Path)) else (value, "wrong type")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return value, "wrong type"
        item = args[0] if args else Any
        items = []
        for x in value:
            out, err = _coerce_value(item, x)
            if err is not None:
                return value, "wrong type"
            items.append(out)
        return (tuple(items) if origin is tuple else items), None
    return value, None  # an annotation this coercer does not know: the section's problems() checks it


def coerce(cls: type, raw: Mapping[str, Any], problems: list[str], *, where: str = "") -> dict[str, Any]:
    """The keyword arguments of the config dataclass ``cls`` from a YAML mapping (or flags).

    Every value is checked against its field's annotation: integers (not booleans, not 2.5), finite
    numbers (an integer becomes a float; NaN and infinity are refused), true/false, strings (a number
    becomes its string; a YAML boolean such as an unquoted ``off`` is refused with a hint), null only
    where the field allows None, lists of such values. Keys that are not fields are refused. Each
    problem is appended to ``problems`` as ``<where><key> ...`` (``where`` = ``"retrieval."``, or
    ``"sft.yaml: "``) and that key is left out, so the caller can collect every problem before raising
    one ``ConfigError``.
    """
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"{where}{key} is not a known setting (known: {', '.join(sorted(known))})")
            continue
        tp = hints.get(key, Any)
        out, err = _coerce_value(tp, value)
        if err is None:
            kwargs[key] = out
        elif err == "not finite":
            problems.append(f"{where}{key} must be a finite number, got {value!r}")
        elif err == "yaml bool":
            problems.append(
                f"{where}{key} must be a string, got {value!r} (YAML reads unquoted on/off/yes/no as true/false: quote it)"
            )
        else:
            problems.append(f"{where}{key} must be {_describe(tp)}, got {'null' if value is None else repr(value)}")
    return kwargs


def build_section(cls: type, name: str, raw: Any, problems: list[str]) -> Any:
    """Section ``name`` of ``tether.yaml`` as a ``cls``, built from what ``coerce`` accepts (``raw``
    None = every default). Problems go to ``problems``; the section's own ``problems()`` is left to
    the caller, which first applies environment and flag overrides."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        problems.append(f"section '{name}' must be a mapping, got {type(raw).__name__}")
        return cls()
    return cls(**coerce(cls, raw, problems, where=f"{name}."))


def _read_config_file(path: Path, *, given: bool) -> str | None:
    """The text of the config file; None when there is none (only ``--config`` must exist). An
    unreadable, non-file or non-UTF-8 file raises one ``ConfigError`` that says what to do."""
    flag = "--config " if given else ""
    try:
        if not path.exists():
            if given:
                raise ConfigError(f"--config {path} does not exist: give the path of a YAML file")
            return None
        if path.is_dir():
            raise ConfigError(f"{flag}{path} is a folder: give the path of a YAML file")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {flag}{path} ({exc.strerror or exc}): make it (and its folder) readable, or pass --config FILE"
        ) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{flag}{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}): save it as UTF-8"
        ) from exc


def load_config(
    data_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    **retrieval_overrides: Any,
) -> TetherConfig:
    """Build and validate the configuration; raise one ConfigError listing every problem."""
    import yaml

    root = resolve_data_dir(data_dir)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"the data dir {root} is a file, not a folder: pass --data-dir FOLDER (or set $TETHER_HOME)")
    path = Path(config_file) if config_file else root / "tether.yaml"
    raw: dict[str, Any] = {}
    problems: list[str] = []
    text = _read_config_file(path, given=bool(config_file))
    if text is not None:
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(f"{path} is not valid YAML{where} ({what}): fix it, or pass --config FILE") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (retrieval: ...)")
        raw = loaded
    for key in raw:
        if key not in _SECTIONS:
            problems.append(f"{path}: unknown section '{key}' (known: {', '.join(_SECTIONS)})")
    sections = {name: build_section(cls, name, raw.get(name), problems) for name, cls in _SECTIONS.items()}
    retrieval = sections["retrieval"]
    env_url = os.environ.get("TETHER_CHROMA_URL")
    if env_url:
        retrieval = dataclasses.replace(retrieval, chroma_url=env_url)
    overrides = {k: v for k, v in retrieval_overrides.items() if v is not None}
    if overrides:
        retrieval = dataclasses.replace(retrieval, **overrides)
    sections["retrieval"] = retrieval
    sections["openai"] = sections["openai"].with_env()
    for section in sections.values():
        problems.extend(section.problems())
    cfg = TetherConfig(data_dir=root, **sections)
    problems.extend(cfg.cross_problems())
    if problems:
        raise ConfigError(problems)
    return cfg


def public_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as JSON-ready data for logs and stored runs, with every field marked
    ``metadata["secret"]`` (API keys) replaced by ``"***"`` when set."""

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                out[f.name] = "***" if f.metadata.get("secret") and value else walk(value)
            return out
        if isinstance(obj, Mapping):
            return {str(k): walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [walk(v) for v in obj]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        return str(obj)

    return walk(cfg)
