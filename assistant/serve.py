"""An OpenAI-compatible server (starlette + uvicorn) for a Tether model and for Tether itself.

    POST /v1/chat/completions   JSON reply, or server-sent events with "stream": true
    GET  /v1/models             the models served (names only)
    GET  /health                {"status": "ok", "models": [...], "queue": {...}} (never a path)

Two kinds of model are served side by side (``tether serve``; docs/SERVE.md):

- the raw model under its own name (``tether`` by default): any ``Generator``, the chat sent as it is;
- ``tether-rag``: Tether's grounded answers. The last user message is the question, earlier
  user/assistant turns the conversation; the reply is ``ChatEngine``'s verified answer with its
  ``[n]`` citations and a "Sources:" list in the text, and a ``citations`` field (and ``tether``:
  refusal, groundedness, turn id) beside ``choices``; streamed, those fields ride on the chunk that
  carries ``finish_reason``.

The wire format is pydantic models in the shape of vLLM's ``protocol.py`` (``ChatCompletionRequest``,
``ModelList``, ``ErrorResponse(error=ErrorInfo(message, type, param, code))``). Fields nobody needs
to honour (``user``, ``metadata``, anything unknown) are accepted and logged as ignored; fields that
would change the reply but are not supported (``n`` > 1, ``tools``, ``logprobs``, penalties, JSON
``response_format``, ``logit_bias`` ...) are refused with 400 naming them.

Limits (``ServeLimits``, ``tether serve`` flags): the body size and JSON nesting depth, NaN and
infinities refused, ``max_tokens`` above the server's ceiling refused (400, not clamped: the client
asked for more than it will get), one generation at a time on one worker thread with at most
``max_queue`` requests waiting (beyond that: 503 with ``Retry-After``), and one deadline per request
(``timeout_s``: queueing, reading the body and generating; 504 before the reply starts, an error
event after). Between tokens the server checks that the client is still there and, when it left,
closes the generator, so the next request does not wait for an abandoned one.

Binding an address other than loopback needs an ``api_key`` (``Authorization: Bearer <key>`` on
every route but ``/health``) unless ``insecure`` says otherwise. Malformed HTTP (a bad
``Content-Length``) is answered by uvicorn's parser with a 400 that this module makes JSON too.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import ipaddress
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from assistant.generators.base import Generator, GenParams, Message
from tether.errors import BackendUnavailable, ConfigError, IndexEmpty, TetherError

if TYPE_CHECKING:
    from assistant.engine import ChatEngine
    from assistant.types import Answer

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
RAG_MODEL = "tether-rag"
SOURCES_MARK = "\n\nSources:\n"  # starts the list of cited sources appended to a tether-rag reply
VERIFIED_MARK = "\n\nwith citations: "  # starts the verified answer when it differs from the streamed draft
_POLL_S = 0.1  # how often a request waiting on a token checks its client and its deadline
_END = object()  # the generator is exhausted


# -- limits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts; every field is a ``tether serve`` flag."""

    max_tokens: int = 512  # ceiling on a request's max_tokens; above it the request is refused (400)
    default_max_tokens: int = 160  # a request that names no max_tokens (clipped to the ceiling)
    max_queue: int = 8  # requests that may wait while one generates; beyond that 503 + Retry-After
    timeout_s: float = 120.0  # one request's whole life: queueing, reading the body, generating
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32  # nesting of objects and arrays in a request body
    retry_after_s: int = 5  # what a 503 asks the client to wait

    def problems(self) -> list[str]:
        out = []
        for name, flag, minimum in (
            ("max_tokens", "--max-tokens", 1),
            ("default_max_tokens", "--max-tokens", 1),
            ("max_queue", "--max-queue", 0),
            ("max_body_bytes", "--max-body-bytes", 1024),
            ("max_json_depth", "--max-json-depth", 4),
            ("retry_after_s", "--retry-after", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                out.append(f"{flag} ({value!r}) must be an integer >= {minimum}")
        if not isinstance(self.timeout_s, (int, float)) or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            out.append(f"--timeout ({self.timeout_s!r}) must be a number of seconds > 0")
        return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to serve a non-loopback address to anyone who can reach it.

    Raises:
        ConfigError: ``host`` is not loopback, no ``api_key`` is set and ``insecure`` is False.
    """
    if is_loopback(host) or api_key or insecure:
        if not is_loopback(host) and not api_key:
            log.warning("serving on %s without an API key (--insecure): anyone who can reach it can use it", host)
        return
    raise ConfigError(
        f"refusing to serve on {host} without an API key: anyone who can reach the address could use the "
        "model and read your documents. Pass --api-key KEY (or set TETHER_API_KEY), bind 127.0.0.1, "
        "or pass --insecure to serve it open anyway"
    )


# -- the wire format (after vLLM's protocol.py) ---------------------------------------------------


class OpenAIBaseModel(BaseModel):
    """Accepts fields it does not know (``model_extra``); the server logs them as ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tether"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(OpenAIBaseModel):
    role: StrictStr
    content: Any  # a string, or a list of {"type": "text", "text": ...} parts; read by the validator
    name: StrictStr | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"({v!r}) must be one of {', '.join(ROLES)}")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> str:
        if v is None:
            raise ValueError("is required")
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be a string or a list of text parts, not {type(v).__name__}")
        texts = []
        for j, part in enumerate(v):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"[{j}]: only text parts are supported, not {kind!r}")
        return "".join(texts)


class StreamOptions(OpenAIBaseModel):
    include_usage: StrictBool = False


# fields that would change the reply, with the value that leaves it unchanged
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "presence_penalty": (0, "is not supported (use repetition_penalty)"),
    "frequency_penalty": (0, "is not supported (use repetition_penalty)"),
    "tools": ([], "is not supported: this server does not call tools"),
    "functions": ([], "is not supported: this server does not call tools"),
    "tool_choice": ("none", "is not supported: this server does not call tools"),
    "function_call": ("none", "is not supported: this server does not call tools"),
    "logprobs": (False, "is not supported"),
    "top_logprobs": (0, "is not supported (logprobs are not)"),
    "logit_bias": ({}, "is not supported"),
    "response_format": ({"type": "text"}, "other than {'type': 'text'} is not supported"),
    "best_of": (1, "other than 1 is not supported"),
    "use_beam_search": (False, "is not supported"),
    "echo": (False, "is not supported"),
    "min_tokens": (0, "is not supported"),
    "min_p": (0, "is not supported"),
    "prediction": (None, "is not supported"),
    "audio": (None, "is not supported: text only"),
    "modalities": (["text"], "other than ['text'] is not supported"),
    "guided_json": (None, "is not supported"),
    "guided_regex": (None, "is not supported"),
    "guided_choice": (None, "is not supported"),
    "guided_grammar": (None, "is not supported"),
    "structured_outputs": (None, "is not supported"),
    "continue_final_message": (False, "is not supported"),
}


class ChatCompletionRequest(OpenAIBaseModel):
    model: StrictStr | None = None  # None: the server's first model
    messages: list[ChatMessage]
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=-1)  # vLLM's extension; -1 or 0 = off
    repetition_penalty: StrictFloat | None = Field(None, gt=0, le=10)
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: Any = ()  # a string or a list of strings (null: none); read by the validator
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    user: StrictStr | None = None  # OpenAI's end-user id: harmless, not used
    # declared so they are not "unknown": refused by _supported unless harmless
    presence_penalty: Any = None
    frequency_penalty: Any = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    response_format: Any = None
    best_of: Any = None
    use_beam_search: Any = None
    echo: Any = None
    min_tokens: Any = None
    min_p: Any = None
    prediction: Any = None
    audio: Any = None
    modalities: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structured_outputs: Any = None
    continue_final_message: Any = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("is required: a non-empty list of {role, content}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> tuple[str, ...]:
        if v is None:
            return ()
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not stops or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"({v!r}) must be a non-empty string or a list of them")
        if len(stops) > 16:
            raise ValueError(f"has {len(stops)} strings; at most 16")
        return tuple(stops)

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"({v}) must be 1: one choice per request")
        return v

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        problems = []
        for name, (harmless, why) in _UNSUPPORTED.items():
            value = getattr(self, name)
            if value is not None and value != harmless and not (value == [] or value == {} or value is False):
                problems.append(f"{name} {why}")
        if self.messages[-1].role == "assistant":
            problems.append(
                "the last message must be from the user or system, not the assistant (prefill is not supported)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[Message]:
        return [Message(m.role, m.content) for m in self.messages]


class RequestError(Exception):
    """A request the server refuses; becomes an ``ErrorResponse`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()


def _loc(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
}
_BOUND_WORDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _problems(err: ValidationError) -> list[str]:
    """pydantic's errors in the words of the request: ``temperature ('hot') must be a number``."""
    out = []
    for e in err.errors(include_url=False):
        loc, kind, value, ctx = _loc(e["loc"]), e["type"], e.get("input"), e.get("ctx") or {}
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        if kind == "value_error":
            message = str(ctx.get("error", e["msg"]))
            out.append(f"{loc}{'' if message.startswith('[') else ' '}{message}" if loc else message)
        elif kind == "missing":
            out.append(f"{loc} is required" + (": a non-empty list of {role, content}" if loc == "messages" else ""))
        elif kind in _TYPE_WORDS:
            out.append(f"{loc} ({shown}) {_TYPE_WORDS[kind]}")
        elif kind in _BOUND_WORDS:
            bound = next(iter(ctx.values()))
            out.append(f"{loc} ({shown}) must be {_BOUND_WORDS[kind]} {bound}")
        else:
            out.append(f"{loc}: {e['msg']}")
    return out


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _depth(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests objects/arrays deeper than ``limit`` (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if d > limit:
            return True
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_request(body: bytes, limits: ServeLimits = ServeLimits()) -> ChatCompletionRequest:
    """The validated request, with its ignored fields logged.

    Raises:
        RequestError: 400 listing every problem found (bad JSON, too deep, wrong types, NaN, ranges).
    """
    try:
        raw = json.loads(body, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise RequestError(400, f"the body nests deeper than {limits.max_json_depth} levels") from exc
    except ValueError as exc:  # includes UnicodeDecodeError
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(raw).__name__}")
    if _depth(raw, limits.max_json_depth):
        raise RequestError(400, f"the body nests deeper than {limits.max_json_depth} levels")
    try:
        req = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise RequestError(400, "; ".join(_problems(exc))) from exc
    ignored = sorted(req.model_extra or {})
    ignored += [f"messages[{i}].{k}" for i, m in enumerate(req.messages) for k in sorted(m.model_extra or {})]
    if req.stream_options is not None:
        ignored += [f"stream_options.{k}" for k in sorted(req.stream_options.model_extra or {})]
    if ignored:
        log.warning("fields present in the request but ignored: %s", ", ".join(ignored))
    return req


# -- what is served ----------------------------------------------------------------------------


def _approx_tokens(text: str) -> int:
    """OpenAI's rule of thumb: about 4 characters a token."""
    return math.ceil(len(text) / 4)


class Job(Protocol):
    """One request's generation: ``pieces`` is advanced on the worker thread only."""

    pieces: Iterator[str]

    def content(self, streamed: str) -> str: ...  # the whole reply, for a non-streaming response
    def finish_reason(self) -> str: ...
    def usage(self, text: str) -> dict: ...
    def extras(self) -> dict: ...  # response fields beyond OpenAI's (tether-rag: citations, tether)


class Backend(Protocol):
    name: str

    def problems(self, req: ChatCompletionRequest) -> list[str]: ...
    def start(self, req: ChatCompletionRequest, max_tokens: int) -> Job: ...
    def info(self) -> dict: ...  # for /health: never a path


def _lazy(make) -> Iterator[str]:
    """The generator's pieces, created on first ``next`` (on the worker thread); closing this closes it."""
    yield from make()


class RawModel:
    """A ``Generator`` served as it is: the messages are its chat."""

    def __init__(self, generator: Generator, name: str = "tether"):
        self.generator = generator
        self.name = name

    def problems(self, req: ChatCompletionRequest) -> list[str]:
        return []

    def start(self, req: ChatCompletionRequest, max_tokens: int) -> Job:
        defaults = GenParams()
        params = GenParams(
            max_new_tokens=max_tokens,
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_p=defaults.top_p if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0),
            repetition_penalty=defaults.repetition_penalty
            if req.repetition_penalty is None
            else req.repetition_penalty,
            seed=req.seed,
            stop=req.stop,
        )
        return _RawJob(self.generator, req.chat(), params)

    def info(self) -> dict:
        ident = getattr(self.generator, "identity", None)
        return {
            "id": self.name,
            "backend": getattr(ident, "backend", None),
            "adapter": getattr(ident, "adapter_hash", None),  # the adapter's id (weights hash), not its folder
        }


class _RawJob:
    def __init__(self, generator: Generator, messages: list[Message], params: GenParams):
        self.generator, self.messages, self.params = generator, messages, params
        self.pieces = _lazy(lambda: generator.stream(messages, params))

    def _stats(self) -> dict:
        stats = getattr(self.generator, "last_stats", None)
        return stats if isinstance(stats, dict) else {}

    def content(self, streamed: str) -> str:
        return streamed

    def finish_reason(self) -> str:
        """ "length" when the generator says it used all of max_tokens, else "stop"."""
        stats = self._stats()
        if stats.get("finish_reason") in ("stop", "length"):
            return stats["finish_reason"]
        new = stats.get("new_tokens")
        return "length" if isinstance(new, int) and new >= self.params.max_new_tokens else "stop"

    def usage(self, text: str) -> dict:
        """Token counts from the generator's ``last_stats`` or ``prompt_tokens()``, else estimated."""
        stats = self._stats()
        prompt = stats.get("prompt_tokens")
        if not isinstance(prompt, int):
            counter = getattr(self.generator, "prompt_tokens", None)
            prompt = (
                counter(self.messages) if callable(counter) else sum(_approx_tokens(m.content) for m in self.messages)
            )
        completion = stats.get("new_tokens")
        if not isinstance(completion, int):
            completion = _approx_tokens(text)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def extras(self) -> dict:
        return {}


class RagModel:
    """Tether's grounded pipeline: ``ChatEngine.stream`` over the data dir's collection."""

    # the engine decides these itself (its prompt, its decoding); a request may set max_tokens and temperature
    REFUSED = ("top_p", "top_k", "repetition_penalty", "seed", "stop")

    def __init__(self, engine: ChatEngine, name: str = RAG_MODEL):
        self.engine = engine
        self.name = name

    def problems(self, req: ChatCompletionRequest) -> list[str]:
        out = [
            f"{f} is not supported by {self.name} (the grounded pipeline sets its own decoding)" for f in self._set(req)
        ]
        if req.messages[-1].role != "user":
            out.append(f"the last message must be the user's question for {self.name}")
        return out

    def _set(self, req: ChatCompletionRequest) -> list[str]:
        return [f for f in self.REFUSED if getattr(req, f) not in (None, ())]

    def start(self, req: ChatCompletionRequest, max_tokens: int) -> Job:
        from assistant.types import Conversation, Turn

        changes: dict[str, Any] = {}
        if req.requested_max_tokens() is not None:
            changes["max_new_tokens"] = max_tokens
        if req.temperature is not None:
            changes["temperature"] = req.temperature
        engine = self.engine
        if changes:  # this request's view of the engine; the shared one is left as it is
            engine = copy.copy(engine)
            engine.cfg = engine.cfg.with_assistant(**changes)
        turns, question = [], None
        chat = [m for m in req.chat() if m.role != "system"]  # the engine writes its own system prompt
        for m in chat[:-1]:
            if m.role == "user":
                question = m.content
            elif question is not None:
                turns.append(Turn(question, strip_reply(m.content)))
                question = None
        return _RagJob(engine, chat[-1].content, Conversation(turns=turns), req.chat())

    def info(self) -> dict:
        ident = getattr(self.engine.generator, "identity", None)
        return {"id": self.name, "backend": "tether-rag", "generator": getattr(ident, "backend", None)}


def strip_reply(content: str) -> str:
    """A tether-rag reply as the engine wrote it: the verified answer without the sources list."""
    if VERIFIED_MARK in content:
        content = content.rsplit(VERIFIED_MARK, 1)[1]
    return content.split(SOURCES_MARK, 1)[0]


def sources_list(answer: Answer) -> str:
    """The cited passages, one line each, to append to the answer's text ("" when none is cited)."""
    cited = {c.n for c in answer.citations}
    lines = [f"[{n}] {h.title} ({h.source})" for n, h in enumerate(answer.passages, start=1) if n in cited]
    return SOURCES_MARK + "\n".join(lines) if lines else ""


class _RagJob:
    """Streams ``Token`` pieces as they come; a ``Replace`` is sent as a note and the replacement
    (a stream cannot take text back); the ``Final`` answer, when it differs from what streamed,
    follows after ``VERIFIED_MARK``; then the sources list."""

    def __init__(self, engine: ChatEngine, question: str, conversation, messages: list[Message]):
        self.answer: Answer | None = None
        self.messages = messages
        self.pieces = self._run(engine, question, conversation)

    def _run(self, engine: ChatEngine, question: str, conversation) -> Iterator[str]:
        from assistant.events import Final, Replace, Token

        shown = ""  # the text of the current attempt, as the client has it
        for event in engine.stream(question, conversation):
            if isinstance(event, Token):
                shown += event.text
                yield event.text
            elif isinstance(event, Replace):
                shown = event.text
                yield f"\n\n({event.reason})\n\n{event.text}"
            elif isinstance(event, Final):
                self.answer = event.answer
                text = event.answer.text
                tail = text[len(shown) :] if text.startswith(shown) else VERIFIED_MARK + text
                yield tail + sources_list(event.answer)
                return

    def content(self, streamed: str) -> str:
        if self.answer is None:
            return streamed
        return self.answer.text + sources_list(self.answer)

    def finish_reason(self) -> str:
        return "stop"

    def usage(self, text: str) -> dict:
        prompt = sum(_approx_tokens(m.content) for m in self.messages)
        completion = _approx_tokens(text)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def extras(self) -> dict:
        a = self.answer
        if a is None:
            return {}
        return {
            "citations": [
                {**c.to_json(), "title": a.passages[c.n - 1].title if 0 < c.n <= len(a.passages) else None}
                for c in a.citations
            ],
            "tether": {
                "refused": a.refused,
                "groundedness": a.groundedness,
                "conflicts": len(a.relevant_conflicts),
                "turn_id": a.turn_id,
                "conversation_id": a.conversation_id,
            },
        }


# -- the ASGI app ----------------------------------------------------------------------------


class _ClientGone(Exception):
    pass


class _TimedOut(Exception):
    pass


def _advance(it: Iterator[str]):
    return next(it, _END)


def _close(it: Iterator[str]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("closing an abandoned generation failed")


def _error_reply(err: RequestError):
    from starlette.responses import JSONResponse

    log.info("-> %d: %s", err.status, err.message)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class _Turnstile:
    """One holder at a time, the rest in FIFO order; a waiter that times out leaves the queue
    (``asyncio.wait_for`` over ``Lock.acquire`` can lose a lock granted as the timeout fires)."""

    def __init__(self) -> None:
        self.busy = False
        self.waiters: deque[asyncio.Future] = deque()

    async def acquire(self, timeout: float) -> bool:
        if not self.busy:
            self.busy = True
            return True
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        await asyncio.wait({fut}, timeout=max(timeout, 0))
        if fut.done():  # granted (``release`` hands the turn over: busy stays True)
            return True
        self.waiters.remove(fut)
        fut.cancel()
        return False

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self.busy = False


class _Slot:
    """A request's turn on the worker: released once (the generator closed on the worker, then the lock)."""

    def __init__(self, app: TetherApp):
        self.app = app
        self.job: Job | None = None
        self.locked = False
        self.done = False

    def release(self) -> None:
        if self.done:
            return
        self.done = True
        if self.job is not None:
            try:
                self.app.worker.submit(_close, self.job.pieces)  # after any step still running: same thread
            except RuntimeError:  # the server is shutting down: the worker is gone
                pass
        if self.locked:
            self.app.lock.release()
        self.app.pending -= 1


class TetherApp:
    """The starlette app (``.asgi``) over ``backends``; one worker thread runs every generation."""

    def __init__(self, backends: Sequence[Backend], *, api_key: str | None = None, limits: ServeLimits = ServeLimits()):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        problems = limits.problems()
        if not backends:
            problems.append("nothing to serve")
        names = [b.name for b in backends]
        if any(not n for n in names) or len(set(names)) != len(names):
            problems.append(f"model names must be non-empty and distinct: {names}")
        if problems:
            raise ConfigError(problems)
        self.backends = {b.name: b for b in backends}
        self.default = names[0]
        self.api_key = api_key
        self.limits = limits
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-generate")
        self.lock = _Turnstile()  # one generation at a time
        self.pending = 0  # requests admitted: the one generating and those waiting
        self.created = int(time.time())
        self.asgi = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ],
            exception_handlers={
                RequestError: self._request_error,
                HTTPException: self._http_error,
                Exception: self._crash,
            },
        )

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ----------------------------------------------------------------------------

    async def _request_error(self, request, exc: RequestError):
        return _error_reply(exc)

    async def _http_error(self, request, exc):
        path = request.url.path
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = RequestError(405, f"use {allow} for {path}", headers={"Allow": allow})
        elif exc.status_code == 404:
            err = RequestError(
                404,
                f"no route {request.method} {path}; try POST /v1/chat/completions, GET /v1/models or GET /health",
                code="not_found",
            )
        else:
            err = RequestError(exc.status_code, str(exc.detail))
        return _error_reply(err)

    async def _crash(self, request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_reply(RequestError(500, f"internal error: {exc!r}", type_="server_error"))

    def _authorize(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise RequestError(
                401,
                "missing or wrong API key (Authorization: Bearer ...)",
                code="invalid_api_key",
                headers={"Connection": "close"},
            )

    async def _read_body(self, request, deadline: float) -> bytes:
        cap = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        too_big = RequestError(413, f"the body is larger than {cap} bytes", headers={"Connection": "close"})
        if length is not None and int(length) > cap:  # uvicorn has checked it is a number
            raise too_big
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise too_big
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError as exc:
            raise RequestError(408, "the body did not arrive in time", headers={"Connection": "close"}) from exc
        return b"".join(chunks)

    async def step(self, it: Iterator[str], request, deadline: float):
        """The next piece from the worker, or ``_END``; meanwhile the client and the deadline are checked.

        Raises:
            _ClientGone, _TimedOut: the piece is abandoned (the slot's release closes the generator).
        """
        if await request.is_disconnected():  # between tokens (uvicorn drops what is sent to a closed connection)
            raise _ClientGone
        if time.monotonic() >= deadline:
            raise _TimedOut
        fut: Future = asyncio.get_running_loop().run_in_executor(self.worker, _advance, it)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=_POLL_S)
            if done:
                return fut.result()
            gone = await request.is_disconnected()
            if gone or time.monotonic() >= deadline:
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody will read it
                raise _ClientGone if gone else _TimedOut

    # -- routes ------------------------------------------------------------------------------

    async def health(self, request):
        from starlette.responses import JSONResponse

        waiting = len(self.lock.waiters)
        return JSONResponse(
            {
                "status": "ok",
                "models": [b.info() for b in self.backends.values()],
                "queue": {"generating": int(self.lock.busy), "waiting": waiting, "max": self.limits.max_queue},
            }
        )

    async def models(self, request):
        from starlette.responses import JSONResponse

        self._authorize(request)
        cards = [ModelCard(id=name, created=self.created) for name in self.backends]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def chat(self, request):
        from starlette.responses import JSONResponse, Response

        deadline = time.monotonic() + self.limits.timeout_s
        self._authorize(request)
        req = parse_request(await self._read_body(request, deadline), self.limits)
        name = req.model or self.default
        backend = self.backends.get(name)
        if backend is None:
            raise RequestError(
                404,
                f"model {name!r} is not served here; this server serves {', '.join(map(repr, self.backends))} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        problems = backend.problems(req)
        asked = req.requested_max_tokens()
        ceiling = self.limits.max_tokens
        if asked is not None and asked > ceiling:
            problems.append(
                f"max_tokens ({asked}) is above this server's ceiling ({ceiling}; tether serve --max-tokens)"
            )
        if problems:
            raise RequestError(400, "; ".join(problems))
        max_tokens = asked if asked is not None else min(self.limits.default_max_tokens, ceiling)

        busy = {"Retry-After": str(self.limits.retry_after_s)}
        if self.pending > self.limits.max_queue:
            raise RequestError(
                503,
                f"the server is busy: one request generating and {self.limits.max_queue} waiting; retry later",
                type_="server_error",
                code="queue_full",
                headers=busy,
            )
        slot = _Slot(self)
        self.pending += 1
        handed_over = False
        try:
            if not await self.lock.acquire(deadline - time.monotonic()):
                raise RequestError(
                    503, "the request waited its whole timeout in the queue; retry later", type_="server_error",
                    code="queue_timeout", headers=busy,
                )  # fmt: skip
            slot.locked = True
            rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            try:
                slot.job = backend.start(req, max_tokens)
                first = await self.step(slot.job.pieces, request, deadline)  # before any header: errors get a status
            except ConfigError as exc:
                raise RequestError(400, "; ".join(exc.problems)) from exc
            except (BackendUnavailable, IndexEmpty) as exc:
                log.warning("generator unavailable: %s", exc)
                raise RequestError(503, str(exc), type_="server_error", headers=busy) from exc
            except TetherError as exc:
                raise RequestError(400, str(exc)) from exc
            except (_ClientGone, _TimedOut):
                raise
            except Exception as exc:
                log.exception("generation failed")
                raise RequestError(500, f"generation failed: {exc!r}", type_="server_error") from exc
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                handed_over = True
                return _EventStream(self, slot, request, deadline, rid, created, name, first, include_usage)
            pieces = []
            piece = first
            try:
                while piece is not _END:
                    pieces.append(piece)
                    piece = await self.step(slot.job.pieces, request, deadline)
            except (_ClientGone, _TimedOut):
                raise
            except Exception as exc:
                log.exception("%s: generation failed", rid)
                status = 503 if isinstance(exc, BackendUnavailable) else 500
                raise RequestError(status, f"generation failed: {exc}", type_="server_error") from exc
            job = slot.job
            text = job.content("".join(pieces))
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": job.finish_reason(),
                    }
                ],
                "usage": UsageInfo(**job.usage(text)).model_dump(),
                **job.extras(),
            }
            log.info("%s: %s, %d messages -> %d chars", rid, name, len(req.messages), len(text))
            return JSONResponse(body)
        except _ClientGone:
            log.info("the client went away; generation stopped")
            return Response(status_code=499)  # nobody reads it
        except _TimedOut as exc:
            raise RequestError(
                504, f"the reply took longer than the server's timeout ({self.limits.timeout_s:g} s)",
                type_="server_error", code="timeout",
            ) from exc  # fmt: skip
        finally:
            if not handed_over:
                slot.release()


class _EventStream:
    """The server-sent events of one streamed reply, as a starlette response (it owns the slot)."""

    def __init__(self, app: TetherApp, slot: _Slot, request, deadline, rid, created, model, first, include_usage):
        self.app, self.slot, self.request, self.deadline = app, slot, request, deadline
        self.rid, self.created, self.model, self.first, self.include_usage = rid, created, model, first, include_usage
        self.background = None

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return {
            "id": self.rid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }

    async def __call__(self, scope, receive, send) -> None:
        async def event(obj) -> None:
            data = obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()
            await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})

        job = self.slot.job
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            await event(self.chunk({"role": "assistant", "content": ""}))
            sent: list[str] = []
            piece = self.first
            try:
                while piece is not _END:
                    if piece:
                        sent.append(piece)
                        await event(self.chunk({"content": piece}))
                    piece = await self.app.step(job.pieces, self.request, self.deadline)
            except _ClientGone:
                log.info("%s: the client went away after %d pieces; generation stopped", self.rid, len(sent))
                return
            except Exception as exc:
                # the status is gone: report in the stream, as vLLM does; no [DONE], so it does not look finished
                if isinstance(exc, _TimedOut):
                    message = f"the reply took longer than the server's timeout ({self.app.limits.timeout_s:g} s)"
                else:
                    log.exception("%s: generation failed mid-stream", self.rid)
                    message = f"generation failed: {exc}"
                await event(ErrorResponse(error=ErrorInfo(message=message, type="server_error")).model_dump())
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            text = "".join(sent)
            await event(self.chunk({}, job.finish_reason(), **job.extras()))
            if self.include_usage:
                usage = UsageInfo(**job.usage(text)).model_dump()
                await event({**self.chunk({}), "choices": [], "usage": usage})
            await event(b"[DONE]")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            log.info("%s: %s -> %d chars (stream)", self.rid, self.model, len(text))
        except OSError:  # uvicorn's ClientDisconnected: the client left while a chunk was being sent
            log.info("%s: the client went away; generation stopped", self.rid)
        finally:
            self.slot.release()


# -- the server --------------------------------------------------------------------------------


def _json_400_protocol():
    """uvicorn's h11 protocol with its parser's 400 (bad Content-Length, bad request line) sent as JSON."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorsH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(RequestError(400, f"malformed HTTP request: {msg}").body()).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            headers.append((b"content-length", str(len(body)).encode()))
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body)):
                self.transport.write(self.conn.send(event))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

    return JSONErrorsH11Protocol


class TetherServer:
    """A uvicorn server for a ``TetherApp`` on a socket bound at construction (port 0 picks a free
    one: see ``.url``). ``run()`` serves until Ctrl-C; ``start()``/``stop()`` (or ``with``) serve
    from a thread."""

    def __init__(self, app: TetherApp, host: str, port: int):
        import uvicorn

        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        config = uvicorn.Config(
            app.asgi,
            http=_json_400_protocol(),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            backlog=2048,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> TetherServer:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > 30:
                raise BackendUnavailable("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        self.app.close()
        self.sock.close()

    def __enter__(self) -> TetherServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_server(
    generator: Generator | None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str = "tether",
    engine: ChatEngine | None = None,
    rag_model_name: str = RAG_MODEL,
    api_key: str | None = None,
    insecure: bool = False,
    limits: ServeLimits = ServeLimits(),
) -> TetherServer:
    """A bound, not yet running server for ``generator`` (as ``model_name``) and, given an
    ``engine``, Tether's grounded answers (as ``rag_model_name``).

    Raises:
        ConfigError: nothing to serve, ``generator`` has no ``stream`` method, a limit is out of
            range, or a non-loopback ``host`` without ``api_key`` (and not ``insecure``).
    """
    problems = []
    if generator is not None and not callable(getattr(generator, "stream", None)):
        problems.append(
            f"the generator ({type(generator).__name__}) has no stream(messages, params) method; serve an hf or openai generator"
        )
    if problems:
        raise ConfigError(problems)
    check_bind(host, api_key, insecure)
    backends: list[Backend] = []
    if generator is not None:
        backends.append(RawModel(generator, model_name))
    if engine is not None:
        backends.append(RagModel(engine, rag_model_name))
    return TetherServer(TetherApp(backends, api_key=api_key, limits=limits), host, port)


def serve(generator: Generator | None, host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    """Serve until interrupted (Ctrl-C); ``kwargs`` as for ``make_server``."""
    server = make_server(generator, host, port, **kwargs)
    log.info("serving %s at %s", ", ".join(server.app.backends), server.url)
    server.run()
