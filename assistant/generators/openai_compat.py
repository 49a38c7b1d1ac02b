"""The ``openai`` backend: any server speaking OpenAI's ``/v1/chat/completions`` (vLLM, llama.cpp
``llama-server``, Ollama, ``tether serve``), through the ``openai`` package (imported lazily).

``stream`` asks for ``"stream": true`` and yields ``choices[0].delta.content`` as the chunks come;
``complete`` asks for one JSON reply. The package parses the server-sent events and does the
retrying; this module maps its errors onto ``BackendUnavailable`` messages that name the URL and
the fix.

Failures, and what is retried (by the package: ``max_retries`` extra attempts, exponential backoff
from 0.5 s capped at 8 s, or the server's ``Retry-After`` / ``retry-after-ms`` up to 60 s):

    cannot connect, connection dropped          retried, until the reply has started
    no byte within ``timeout`` seconds          retried, until the reply has started (each attempt
                                                waits ``timeout`` again)
    HTTP 408, 409, 429 or 5xx                   retried
    other HTTP 4xx (bad request, unknown model, BackendUnavailable with the server's message
    auth)
    silence, an error event or a cut stream     BackendUnavailable, never retried: the caller may
    once the reply has started                  already have shown part of it
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from assistant.generators.base import Capabilities, GeneratorIdentity, GenParams, Message
from tether.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from tether.config import OpenAIConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds; a connect never waits longer than this, whatever ``timeout`` is
NO_API_KEY = "no-key"  # the openai package refuses to build a client without a key; key-less servers ignore it


def api_base_url(base_url: str) -> str:
    """``http://h:8000``, ``http://h:8000/v1`` or the full ``.../v1/chat/completions`` -> ``.../v1``,
    the base URL the openai client wants."""
    url = base_url.rstrip("/").removesuffix("/chat/completions")
    return url if url.endswith("/v1") else url + "/v1"


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000``, ``http://h:8000/v1`` or the full ``.../v1/chat/completions`` -> the full URL."""
    return api_base_url(base_url) + "/chat/completions"


def _error_message(body: bytes) -> str:
    """The server's own words from an error body: OpenAI/vLLM/llama.cpp ``{"error": {"message"}}``,
    Ollama ``{"error": "..."}``, FastAPI ``{"detail": ...}``, else the text itself (shortened)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        for key in ("message", "detail"):
            if obj.get(key):
                return str(obj[key])
    return text[:300]


def _retried_status(status: int) -> bool:
    """The statuses the openai package retries."""
    return status in (408, 409, 429) or status >= 500


class OpenAIGenerator:
    """Streams replies from an OpenAI-compatible chat completions server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing).
        model: the model name the server knows (``GET /v1/models``).
        api_key: sent as ``Authorization: Bearer ...``; None: a placeholder the server may ignore.
        timeout: seconds to wait for any byte (the reply's headers, or the next piece of a stream).
        max_retries: extra attempts (the openai client's own) after a connection error, a timeout or
            HTTP 408/409/429/5xx, before the reply has started.

    ``GenParams`` map to ``max_tokens``, ``temperature``, ``top_p``, ``seed`` and ``stop``;
    ``top_k`` and ``repetition_penalty`` are sent (vLLM's names) only when not at their defaults,
    since OpenAI itself rejects unknown fields. ``cad_alpha`` needs logits and is refused.

    Raises:
        ConfigError: bad constructor values, or invalid ``GenParams`` (from ``stream``/``complete``).
        BackendUnavailable: the server is down, refuses the request or fails mid-reply.
    """

    capabilities = Capabilities(cad=False, token_streaming=True, needs_llm_prompt=True)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ):
        problems = []
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"openai.url ({base_url!r}) must look like http://host:port/v1")
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                problems.append(f"openai.url ({base_url!r}) has an invalid port")
        if not model:
            problems.append("openai.model must not be empty")
        if not timeout > 0:
            problems.append(f"openai.timeout_s ({timeout}) must be > 0")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            problems.append(f"openai.max_retries ({max_retries!r}) must be an integer >= 0")
        if problems:
            raise ConfigError(problems)

        import openai

        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self._client = openai.OpenAI(
            base_url=api_base_url(base_url),
            api_key=api_key or NO_API_KEY,
            timeout=openai.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
            max_retries=max_retries,
        )
        self.identity = GeneratorIdentity(backend="openai", model=model, decoding="greedy")
        self.last_stats: dict = {}

    @classmethod
    def from_config(cls, cfg: OpenAIConfig) -> OpenAIGenerator:
        """The generator the ``openai:`` config section describes.

        Raises:
            ConfigError: ``openai.url`` is not set, or a value is invalid.
        """
        if not cfg.url:
            raise ConfigError(
                ["openai.url is not set (e.g. http://127.0.0.1:8000/v1); set it in tether.yaml under openai:"]
            )
        return cls(cfg.url, cfg.model, api_key=cfg.api_key, timeout=cfg.timeout_s, max_retries=cfg.max_retries)

    # -- request -----------------------------------------------------------------------------------

    def payload(self, messages: Sequence[Message], params: GenParams, *, stream: bool) -> dict:
        """The JSON body for ``messages`` and ``params``. Raises ConfigError on invalid params."""
        problems = params.problems()
        if params.cad_alpha > 0:
            problems.append(
                f"cad_alpha ({params.cad_alpha}): context-aware decoding needs the model's logits, which an "
                "OpenAI-compatible server does not give; use the hf generator"
            )
        if problems:
            raise ConfigError(problems)
        body: dict = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": stream,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _unavailable(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"OpenAI-compatible server at {self.base_url} is not answering ({reason}): start it, "
            "or choose another generator with --generator"
        )

    def _request_failed(self, exc: Exception, *, retried: bool = True) -> BackendUnavailable:
        """``exc`` (an openai error raised before the reply started) as a BackendUnavailable."""
        import openai

        attempts = self.max_retries + 1 if retried else 1
        tries = f"; {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = _error_message(exc.response.content)
            if _retried_status(status):
                return self._unavailable(f"HTTP {status}: {message}{tries}")
            hint = ""
            if status in (401, 403):
                hint = "; set openai.api_key (or TETHER_OPENAI_API_KEY) to the server's api_key"
            elif status == 404:
                hint = f"; check that the URL ends in /v1 and that {self.model!r} is a model the server lists at /v1/models"
            return BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} refused the request (HTTP {status}: {message}){hint}"
            )
        if isinstance(exc, openai.APITimeoutError):
            return self._unavailable(f"no response within {self.timeout:g} s{tries}")
        if isinstance(exc, openai.APIConnectionError):
            return self._unavailable(f"cannot connect: {exc.__cause__ or exc}{tries}")
        return BackendUnavailable(f"OpenAI-compatible server at {self.base_url} failed: {exc}")

    def models(self) -> list[str]:
        """The model ids the server lists at ``GET /v1/models``: one quick attempt, no retries, so
        callers can check the server before relying on it.

        Raises:
            BackendUnavailable: the server is down or answers with an error.
        """
        import openai

        try:
            page = self._client.with_options(max_retries=0).models.list()
            return [m.id for m in page.data]
        except openai.OpenAIError as exc:
            raise self._request_failed(exc, retried=False) from exc
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} sent a malformed /v1/models reply"
            ) from exc

    # -- the Generator protocol ----------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The reply as text pieces, as the server sends them. Fills ``last_stats``
        (``prompt_tokens``/``new_tokens`` when the server reports usage, ``finish_reason``, timings)."""
        import openai

        body = self._start(messages, params, stream=True)
        stats, t0 = self.last_stats, time.perf_counter()
        try:
            chunks = self._client.chat.completions.create(**body)
        except openai.OpenAIError as exc:
            raise self._request_failed(exc) from exc
        yielded = False
        try:
            if chunks.response.headers.get("content-type", "").startswith("application/json"):
                # the server ignored "stream": true and sent the whole reply
                text = self._parse_completion(chunks.response.read(), stats)
                stats["total_ms"] = stats["ttft_ms"] = (time.perf_counter() - t0) * 1000
                if text:
                    yield text
                return
            for chunk in chunks:
                self._record_usage(stats, chunk.usage)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = choice.delta.content if choice.delta is not None else None
                if piece:
                    if not yielded:
                        stats["ttft_ms"] = (time.perf_counter() - t0) * 1000
                    yielded = True
                    yield piece
                if choice.finish_reason:
                    stats["finish_reason"] = choice.finish_reason
            stats["total_ms"] = (time.perf_counter() - t0) * 1000
            if stats["finish_reason"] is None:
                raise self._broken("the stream ended before the reply finished (no finish_reason)", yielded)
        except openai.APIConnectionError as exc:
            reason = (
                f"no data for {self.timeout:g} s"
                if isinstance(exc, openai.APITimeoutError)
                else f"connection lost: {exc.__cause__ or exc}"
            )
            raise self._broken(reason, yielded) from exc
        except openai.APIError as exc:  # an error event inside the stream
            raise BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} failed while generating: {exc.message}"
            ) from exc
        except (ValueError, AttributeError, TypeError) as exc:  # an event whose data is not a JSON chunk
            raise BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} sent a malformed event: {exc}"
            ) from exc
        finally:
            chunks.close()

    def complete(self, messages: Sequence[Message], params: GenParams) -> str:
        """The whole reply from one non-streaming request (``"stream": false``); same retries."""
        import openai

        body = self._start(messages, params, stream=False)
        stats, t0 = self.last_stats, time.perf_counter()
        try:
            raw = self._client.chat.completions.with_raw_response.create(**body)
        except openai.OpenAIError as exc:
            raise self._request_failed(exc) from exc
        text = self._parse_completion(raw.content, stats)
        stats["total_ms"] = stats["ttft_ms"] = (time.perf_counter() - t0) * 1000
        return text

    def _start(self, messages: Sequence[Message], params: GenParams, *, stream: bool) -> dict:
        """The keyword arguments of ``chat.completions.create``; resets ``last_stats`` and the identity."""
        body = self.payload(messages, params, stream=stream)
        extra = {k: body.pop(k) for k in ("top_k", "repetition_penalty") if k in body}
        if extra:
            body["extra_body"] = extra
        self.identity = replace(self.identity, decoding="greedy" if params.temperature == 0 else "sample")
        self.last_stats = {"ttft_ms": 0.0, "total_ms": 0.0, "finish_reason": None}
        return body

    def _broken(self, reason: str, yielded: bool) -> BackendUnavailable:
        if yielded:
            return BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} broke off the reply after it had started "
                f"({reason}); not retried, since part of it was already shown"
            )
        return self._unavailable(reason)

    @staticmethod
    def _record_usage(stats: dict, usage) -> None:
        if usage is None:
            return
        get = usage.get if isinstance(usage, dict) else lambda key: getattr(usage, key, None)
        if isinstance(get("prompt_tokens"), int):
            stats["prompt_tokens"] = get("prompt_tokens")
        if isinstance(get("completion_tokens"), int):
            stats["new_tokens"] = get("completion_tokens")

    def _parse_completion(self, raw: bytes, stats: dict) -> str:
        try:
            obj = json.loads(raw)
            choice = obj["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendUnavailable(
                f"OpenAI-compatible server at {self.base_url} sent a reply without choices[0].message: {raw[:200]!r}"
            ) from exc
        stats["finish_reason"] = choice.get("finish_reason")
        self._record_usage(stats, obj.get("usage"))
        return text
