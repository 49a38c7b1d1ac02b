"""The generation seam: every backend implements ``Generator.stream`` and declares its ``Capabilities``.

Backends: ``hf`` (transformers, local checkpoint, optional PEFT adapter; the default, SmolLM2;
declares CAD), ``openai`` (any OpenAI-compatible server) and ``extractive`` (no LLM: picks the
supporting sentences of ``GenParams.grounding``; declares ``needs_llm_prompt=False``). The engine
reads the declaration (``capabilities_of``), never the backend's name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from retrieval.search import SearchHit

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Grounding:
    """What an answer is grounded in, for a backend that answers from passages rather than from a
    prompt (``Capabilities.needs_llm_prompt`` False): the question and the selected passages, whose
    order gives the ``[n]`` citations."""

    question: str
    passages: tuple[SearchHit, ...]


@dataclass(frozen=True)
class GenParams:
    """Decoding parameters. temperature 0 = greedy."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram: int | None = None  # no n-gram twice in the reply: None = the generator's default, 0 = off
    # the numbers the reply may state (hf: hf.restrict_numbers fills it from grounding's passages); None = any
    allowed_numbers: frozenset[str] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # context-aware decoding (Shi et al. 2023, arXiv 2305.14739): logits = (1+a)*logit(y|context, question)
    # - a*logit(y|question). alpha 0 = off. With alpha > 0, cad_context_free must hold the same chat
    # without the sources (assistant.prompts.build_context_free_messages(question)); the hf backend
    # raises ConfigError when it is empty, and backends without logits (openai) refuse alpha > 0.
    cad_alpha: float = 0.0
    # AdaCAD (Wang et al., NAACL 2025): with cad_alpha > 0, the weight of each step is the Jensen-Shannon
    # divergence of the two rows' distributions instead of cad_alpha (0 where memory and sources agree)
    cad_adaptive: bool = False
    cad_context_free: tuple[Message, ...] = field(default=())
    # the question and passages themselves, for backends that answer from them (extractive); LLMs ignore it
    grounding: Grounding | None = None

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
    runtime: str | None = None  # hf: None (torch) | onnx | onnx-int8 (generators/onnx_lm.py)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared on its class (``capabilities = Capabilities(...)``).

    The defaults describe a plain LLM behind an API: it reads the prompt, streams its reply token
    by token and has no logits to offer."""

    cad: bool = False  # honours GenParams.cad_alpha > 0 (context-aware decoding needs the model's logits)
    token_streaming: bool = True  # stream() yields pieces as they are decoded, not the whole reply in one
    # True: answers the messages (an LLM: the engine builds the grounded prompt, attaches citations to
    # its reply, reads refusal phrases, can ask it from memory). False: answers from GenParams.grounding
    # and cites the passages itself (the extractive answerer)
    needs_llm_prompt: bool = True


LLM = Capabilities()


class Generator(Protocol):
    """Streams the assistant's reply to a chat, token by token (text pieces)."""

    identity: GeneratorIdentity
    capabilities: Capabilities

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]: ...


def capabilities_of(gen: object) -> Capabilities:
    """The capabilities ``gen`` declares; a generator that declares none is a plain LLM (``LLM``)."""
    caps = getattr(gen, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else LLM


def generate(gen: Generator, messages: Sequence[Message], params: GenParams) -> str:
    """The whole reply as one string."""
    return "".join(gen.stream(messages, params))
