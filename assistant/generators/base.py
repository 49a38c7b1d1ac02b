"""The generation seam: every backend implements ``Generator.stream``.

Backends: ``hf`` (transformers, local checkpoint, optional PEFT adapter; the default, SmolLM2),
``extractive`` (no LLM: picks supporting sentences), ``openai`` (any OpenAI-compatible server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, Sequence

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class GenParams:
    """Decoding parameters. temperature 0 = greedy."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # context-aware decoding (Shi et al. 2023, arXiv 2305.14739): logits = (1+a)*logit(y|context, question)
    # - a*logit(y|question). alpha 0 = off. With alpha > 0, cad_context_free must hold the same chat
    # without the sources (assistant.prompts.build_context_free_messages(question)); the hf backend
    # raises ConfigError when it is empty, and backends without logits (openai) refuse alpha > 0.
    cad_alpha: float = 0.0
    cad_context_free: tuple[Message, ...] = field(default=())

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if self.temperature < 0:
            out.append(f"temperature ({self.temperature}) must be >= 0")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p ({self.top_p}) must be in (0, 1]")
        if self.cad_alpha < 0:
            out.append(f"cad_alpha ({self.cad_alpha}) must be >= 0")
        return out


@dataclass(frozen=True)
class GeneratorIdentity:
    """What produced an answer: logged with every turn and eval run."""

    backend: str  # hf | extractive | openai
    model: str  # path, hub id or server model name
    adapter: str | None = None  # adapter dir
    adapter_hash: str | None = None  # sha256 of the adapter weights, first 16 hex
    decoding: str = "greedy"  # greedy | sample | cad(alpha=0.5) | cad(alpha=0.5),sample


class Generator(Protocol):
    """Streams the assistant's reply to a chat, token by token (text pieces)."""

    identity: GeneratorIdentity

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]: ...


def generate(gen: Generator, messages: Sequence[Message], params: GenParams) -> str:
    """The whole reply as one string."""
    return "".join(gen.stream(messages, params))
