"""Typed, frozen configuration for every Tether stage, validated up front.

Resolution order for the data dir: ``--data-dir``, else ``$TETHER_HOME``, else ``./.tether``.
The config file is ``--config FILE`` or, when present, ``<data dir>/tether.yaml``; it holds one
mapping per section (``retrieval:``, ...). Environment variables override the file where noted
(``TETHER_CHROMA_URL``), and CLI flags override both.

Example ``tether.yaml``::

    retrieval:
      chunk_size: 200
      chunk_overlap: 30
      max_file_mb: 50
      chroma_url: http://127.0.0.1:8000   # use a Chroma server instead of the embedded store
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from tether.errors import ConfigError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


@dataclass(frozen=True)
class RetrievalConfig:
    """Ingestion, embedding, storage and search."""

    collection: str = field(default="tether", metadata={"help": "Chroma collection name (3-63 chars: letters, digits, . _ -)"})
    embed_model: str = field(
        default=DEFAULT_EMBED_MODEL,
        metadata={"help": "sentence-transformers model: 'all-MiniLM-L6-v2' (shipped offline) or a local path"},
    )
    embed_batch_size: int = field(default=16, metadata={"help": "texts per embedding forward pass"})
    embed_int8: bool = field(
        default=True,
        metadata={"help": "int8 (per-channel) dynamic quantization of the embedder on the CPU: 2x faster, same recall (docs/BENCHMARKS.md)"},
    )
    chunk_size: int = field(default=200, metadata={"help": "chunk size in tokens of the embedder's tokenizer"})
    chunk_overlap: int = field(default=30, metadata={"help": "tokens shared by neighbouring chunks"})
    max_file_mb: float = field(default=50.0, metadata={"help": "files larger than this are skipped"})
    max_unzipped_mb: float = field(default=200.0, metadata={"help": "DOCX files that inflate beyond this are rejected"})
    max_zip_ratio: float = field(default=100.0, metadata={"help": "DOCX compression ratio above which a zip bomb is assumed"})
    chroma_url: str | None = field(default=None, metadata={"help": "http://host:port of a Chroma server; none = embedded"})
    reranker: str | None = field(default=None, metadata={"help": "local path of a sentence-transformers CrossEncoder"})
    rerank_top: int = field(default=20, metadata={"help": "fused candidates the reranker re-scores"})
    rrf_k: int = field(default=60, metadata={"help": "reciprocal rank fusion constant"})
    candidates: int = field(default=50, metadata={"help": "candidates taken from each of dense and BM25 before fusion"})

    @property
    def embed_identity(self) -> str:
        """What a collection's vectors were made with; collections refuse a different one."""
        return self.embed_model + ("+int8" if self.embed_int8 else "")

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
            out.append(f"retrieval.chunk_overlap ({self.chunk_overlap}) must be >= 0 and < chunk_size ({self.chunk_size})")
        if self.max_file_mb <= 0:
            out.append(f"--max-file-mb / retrieval.max_file_mb ({self.max_file_mb}) must be > 0")
        if self.embed_batch_size < 1:
            out.append(f"retrieval.embed_batch_size ({self.embed_batch_size}) must be >= 1")
        for name in ("rrf_k", "candidates", "rerank_top"):
            if getattr(self, name) < 1:
                out.append(f"retrieval.{name} ({getattr(self, name)}) must be >= 1")
        if self.chroma_url and not re.match(r"^https?://[^/:]+(:\d+)?/?$", self.chroma_url):
            out.append(f"retrieval.chroma_url / TETHER_CHROMA_URL ({self.chroma_url!r}) must look like http://host:port")
        return out


GENERATORS = ("hf", "extractive", "openai")
CONFLICT_POLICIES = ("prefer-recent", "prefer-official", "present-both")  # assistant/resolution.py
CAD_MODES = ("off", "on", "auto")


@dataclass(frozen=True)
class AssistantConfig:
    """The chat engine and its generator."""

    generator: str = field(default="hf", metadata={"help": "hf | extractive | openai"})
    model: str = field(default="smollm2", metadata={"help": "'smollm2' (shipped offline) or a local checkpoint dir"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter dir applied on top of the model"})
    openai_url: str | None = field(default=None, metadata={"help": "base URL of an OpenAI-compatible server"})
    openai_model: str = field(default="tether", metadata={"help": "model name sent to that server"})
    top_k: int = field(default=5, metadata={"help": "passages retrieved per question"})
    max_new_tokens: int = field(default=160, metadata={"help": "longest generated answer, in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    llm_context: str = field(
        default="sentences",
        metadata={"help": "what the LLM sees: focused (the 3 best sentences overall) | sentences (3 per passage) | passages"},
    )
    faithful_prompt: bool = field(default=False, metadata={"help": "opinion-based framing that favours the context"})
    nli_model: str | None = field(default=None, metadata={"help": "local NLI cross-encoder for citation verification"})
    fallback_to_extractive: bool = field(default=True, metadata={"help": "answer extractively when the LLM cannot load"})
    min_relevance: float = field(
        default=0.58,
        metadata={"help": "refuse without generating when no retrieved sentence scores this close to the question (cosine + 0.25 x shared words)"},
    )
    conflicts: bool = field(default=True, metadata={"help": "detect contradicting claims among the retrieved passages"})
    conflict_policy: str = field(
        default="prefer-official",
        metadata={"help": "prefer-official (superseded loses, then authority, then date) | prefer-recent | present-both"},
    )
    cad: str = field(
        default="off",
        metadata={"help": "context-aware decoding (hf only): off | on | auto (on when sources conflict or the answer is poorly grounded)"},
    )
    cad_alpha: float = field(default=0.5, metadata={"help": "CAD strength: logits (1+a)*with context - a*without"})
    cad_min_groundedness: float = field(default=0.5, metadata={"help": "cad=auto: regenerate with CAD below this groundedness"})
    consistency: bool = field(
        default=False,
        metadata={"help": "intra-memory check: also answer the question and two paraphrases without sources and compare"},
    )

    def problems(self) -> list[str]:
        out = []
        if self.generator not in GENERATORS:
            out.append(f"--generator / assistant.generator ({self.generator!r}) must be one of {', '.join(GENERATORS)}")
        if self.generator == "openai" and not self.openai_url:
            out.append("assistant.generator is 'openai' but assistant.openai_url is not set (e.g. http://127.0.0.1:8000/v1)")
        if not 1 <= self.top_k <= 50:
            out.append(f"-k / assistant.top_k ({self.top_k}) must be between 1 and 50")
        if self.max_new_tokens < 1:
            out.append(f"assistant.max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if self.temperature < 0:
            out.append(f"assistant.temperature ({self.temperature}) must be >= 0")
        if self.llm_context not in ("focused", "sentences", "passages"):
            out.append(f"assistant.llm_context ({self.llm_context!r}) must be 'focused', 'sentences' or 'passages'")
        if not 0 <= self.min_relevance <= 2:
            out.append(f"assistant.min_relevance ({self.min_relevance}) must be between 0 and 2 (0 = never refuse for low relevance)")
        if self.conflict_policy not in CONFLICT_POLICIES:
            out.append(f"--policy / assistant.conflict_policy ({self.conflict_policy!r}) must be one of {', '.join(CONFLICT_POLICIES)}")
        if self.cad not in CAD_MODES:
            out.append(f"--cad / assistant.cad ({self.cad!r}) must be one of {', '.join(CAD_MODES)}")
        if not 0 < self.cad_alpha <= 5:
            out.append(f"assistant.cad_alpha ({self.cad_alpha}) must be in (0, 5]; turn CAD off with assistant.cad: off")
        if not 0 <= self.cad_min_groundedness <= 1:
            out.append(f"assistant.cad_min_groundedness ({self.cad_min_groundedness}) must be between 0 and 1")
        return out


@dataclass(frozen=True)
class TetherConfig:
    """The whole configuration. Sections are added by the stages that need them."""

    data_dir: Path
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)

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

    def with_assistant(self, **changes: Any) -> "TetherConfig":
        """A copy with some assistant fields changed, validated again."""
        cfg = dataclasses.replace(self, assistant=dataclasses.replace(self.assistant, **changes))
        problems = cfg.assistant.problems()
        if problems:
            raise ConfigError(problems)
        return cfg

    def with_retrieval(self, **changes: Any) -> "TetherConfig":
        """A copy with some retrieval fields changed, validated again."""
        cfg = dataclasses.replace(self, retrieval=dataclasses.replace(self.retrieval, **changes))
        problems = cfg.retrieval.problems()
        if problems:
            raise ConfigError(problems)
        return cfg


_SECTIONS: dict[str, type] = {"retrieval": RetrievalConfig, "assistant": AssistantConfig}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("TETHER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / ".tether").resolve()


def _build_section(cls: type, name: str, raw: Any, problems: list[str]) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        problems.append(f"section '{name}' must be a mapping, got {type(raw).__name__}")
        return cls()
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"{name}.{key} is not a known setting (known: {', '.join(sorted(known))})")
            continue
        default = known[key].default
        if value is not None and default is not None and not isinstance(default, str) and isinstance(value, str):
            problems.append(f"{name}.{key} must be a {type(default).__name__}, got the string {value!r}")
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(
    data_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    **retrieval_overrides: Any,
) -> TetherConfig:
    """Build and validate the configuration; raise one ConfigError listing every problem."""
    import yaml

    root = resolve_data_dir(data_dir)
    path = Path(config_file) if config_file else root / "tether.yaml"
    raw: dict[str, Any] = {}
    problems: list[str] = []
    if config_file and not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (retrieval: ...)")
        raw = loaded
    for key in raw:
        if key not in _SECTIONS:
            problems.append(f"{path}: unknown section '{key}' (known: {', '.join(_SECTIONS)})")
    sections = {name: _build_section(cls, name, raw.get(name), problems) for name, cls in _SECTIONS.items()}
    retrieval = sections["retrieval"]
    env_url = os.environ.get("TETHER_CHROMA_URL")
    if env_url:
        retrieval = dataclasses.replace(retrieval, chroma_url=env_url)
    overrides = {k: v for k, v in retrieval_overrides.items() if v is not None}
    if overrides:
        retrieval = dataclasses.replace(retrieval, **overrides)
    assistant = sections["assistant"]
    problems.extend(retrieval.problems())
    problems.extend(assistant.problems())
    if problems:
        raise ConfigError(problems)
    return TetherConfig(data_dir=root, retrieval=retrieval, assistant=assistant)
