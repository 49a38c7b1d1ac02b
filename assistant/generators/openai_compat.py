"""The ``openai`` backend: any server speaking OpenAI's ``/v1/chat/completions`` (vLLM, llama.cpp
``llama-server``, Ollama, ``tether``'s own ``assistant.serve``), over the standard library only.

``stream`` sends ``"stream": true`` and reads the server-sent events: ``data: {...}`` lines,
``choices[0].delta.content``, up to ``data: [DONE]``. ``complete`` asks for one JSON reply.

Failures, and what is retried (with backoff ``backoff * 2**attempt``, or the server's
``Retry-After``):

    cannot connect, connection dropped          retried, until the first text piece is yielded
    HTTP 429 or 5xx                             retried
    HTTP 4xx (bad request, unknown model, auth) BackendUnavailable with the server's message
    no byte within ``timeout`` seconds          BackendUnavailable, not retried (a busy server
                                                would only get the same generation again)
    an error event or a cut stream after text   BackendUnavailable, never retried: the caller
                                                has already shown part of the reply
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from dataclasses import replace
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from assistant.generators.base import GenParams, GeneratorIdentity, Message
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds; a connect never waits longer than this, whatever ``timeout`` is
MAX_RETRY_AFTER = 30.0  # seconds; a longer Retry-After is capped
_ERROR_BODY_LIMIT = 64 * 1024


class _Transient(Exception):
    """A failure worth another attempt (connection refused or lost, HTTP 429/5xx)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000``, ``http://h:8000/v1`` or the full ``.../v1/chat/completions`` -> the full URL."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


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


def _sse_data(resp) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines); comments
    (``: ping``) and other fields (``event:``, ``id:``) are skipped."""
    data: list[str] = []
    while True:
        raw = resp.readline()
        if not raw:
            if data:
                yield "\n".join(data)
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)


class OpenAIGenerator:
    """Streams replies from an OpenAI-compatible chat completions server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing).
        model: the model name the server knows (``GET /v1/models``).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds to wait for any byte (headers, or the next piece of a stream).
        retries: extra attempts after a connection error or HTTP 429/5xx, before any text arrived.
        backoff: seconds before the first retry; doubles each time.

    ``GenParams`` map to ``max_tokens``, ``temperature``, ``top_p``, ``seed`` and ``stop``;
    ``top_k`` and ``repetition_penalty`` are sent (vLLM's names) only when not at their defaults,
    since OpenAI itself rejects unknown fields. ``cad_alpha`` needs logits and is refused.

    Raises:
        ConfigError: bad constructor values, or invalid ``GenParams`` (from ``stream``/``complete``).
        BackendUnavailable: the server is down, refuses the request or fails mid-reply.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60,
        retries: int = 2,
        backoff: float = 0.5,
    ):
        problems = []
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"assistant.openai_url ({base_url!r}) must look like http://host:port/v1")
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                problems.append(f"assistant.openai_url ({base_url!r}) has an invalid port")
        if not model:
            problems.append("assistant.openai_model must not be empty")
        if not timeout > 0:
            problems.append(f"timeout ({timeout}) must be > 0")
        if retries < 0:
            problems.append(f"retries ({retries}) must be >= 0")
        if backoff < 0:
            problems.append(f"backoff ({backoff}) must be >= 0")
        if problems:
            raise ConfigError(problems)

        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        url = urlsplit(self.url)
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._path = url.path + (f"?{url.query}" if url.query else "")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = backoff
        self.identity = GeneratorIdentity(backend="openai", model=model, decoding="greedy")
        self.last_stats: dict = {}

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

    def _send(self, body: bytes | None, accept: str, path: str | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One POST of ``body`` to chat completions (a GET of ``path`` when body is None). Returns
        (connection, 200 response); the caller closes the connection.
        Raises _Transient (worth retrying) or BackendUnavailable."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=min(self.timeout, CONNECT_TIMEOUT))
        headers = {"Content-Type": "application/json", "Accept": accept, "User-Agent": "tether"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _Transient(f"cannot connect: {exc}") from exc
        conn.sock.settimeout(self.timeout)
        try:
            conn.request("GET" if body is None else "POST", path or self._path, body=body, headers=headers)
            resp = conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise self._unavailable(f"no response within {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Transient(f"connection failed: {exc!r}") from exc
        if resp.status == 200:
            return conn, resp
        try:
            message = _error_message(resp.read(_ERROR_BODY_LIMIT))
        except (OSError, http.client.HTTPException):
            message = "(body unreadable)"
        finally:
            conn.close()
        if resp.status == 429 or resp.status >= 500:
            retry_after = resp.getheader("Retry-After")
            seconds = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
            raise _Transient(f"HTTP {resp.status}: {message}", retry_after=seconds)
        hint = ""
        if resp.status in (401, 403):
            hint = "; pass the server's api_key"
        elif resp.status == 404:
            hint = f"; check that the URL ends in /v1 and that {self.model!r} is a model the server lists at /v1/models"
        raise BackendUnavailable(
            f"OpenAI-compatible server at {self.base_url} refused the request (HTTP {resp.status}: {message}){hint}"
        )

    def _wait(self, attempt: int, exc: _Transient) -> None:
        delay = self.backoff * 2**attempt
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
        log.warning("%s: %s; retry %d/%d in %.2f s", self.url, exc.reason, attempt + 1, self.retries, delay)
        time.sleep(delay)

    def _give_up(self, exc: _Transient, attempts: int) -> BackendUnavailable:
        tries = f"; {attempts} attempts" if attempts > 1 else ""
        return self._unavailable(f"{exc.reason}{tries}")

    def _record_end(self, stats: dict, obj: dict) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("prompt_tokens"), int):
                stats["prompt_tokens"] = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                stats["new_tokens"] = usage["completion_tokens"]

    def models(self) -> list[str]:
        """The model ids the server lists at ``GET /v1/models``: one quick attempt, no retries, so
        callers can check the server before relying on it.

        Raises:
            BackendUnavailable: the server is down or answers with an error.
        """
        path = self._path.split("?", 1)[0].removesuffix("/chat/completions") + "/models"
        conn = None
        try:
            conn, resp = self._send(None, "application/json", path)
            return [m["id"] for m in json.loads(resp.read())["data"]]
        except _Transient as exc:
            raise self._unavailable(exc.reason) from exc
        except TimeoutError as exc:
            raise self._unavailable(f"no data for {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable(f"connection lost: {exc!r}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailable(f"OpenAI-compatible server at {self.base_url} sent a malformed /v1/models reply") from exc
        finally:
            if conn is not None:
                conn.close()

    # -- the Generator protocol ----------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The reply as text pieces, as the server sends them. Fills ``last_stats``
        (``prompt_tokens``/``new_tokens`` when the server reports usage, ``finish_reason``, timings)."""
        yield from self._request(messages, params, stream=True)

    def complete(self, messages: Sequence[Message], params: GenParams) -> str:
        """The whole reply from one non-streaming request (``"stream": false``); same retries."""
        return "".join(self._request(messages, params, stream=False))

    def _request(self, messages: Sequence[Message], params: GenParams, *, stream: bool) -> Iterator[str]:
        """One chat completion with retries: transient failures (connection refused or lost, 429/5xx,
        a stream cut before ``[DONE]``) are retried with backoff until the reply has started."""
        body = json.dumps(self.payload(messages, params, stream=stream)).encode()
        self.identity = replace(self.identity, decoding="greedy" if params.temperature == 0 else "sample")
        stats: dict = {"ttft_ms": 0.0, "total_ms": 0.0, "finish_reason": None}
        self.last_stats = stats
        t0 = time.perf_counter()
        attempt = 0
        while True:
            conn = None
            yielded = False
            try:
                conn, resp = self._send(body, "text/event-stream" if stream else "application/json")
                if not stream or (resp.getheader("Content-Type") or "").startswith("application/json"):
                    # asked for the whole reply, or the server ignored "stream": true and sent it
                    text = self._parse_completion(resp.read(), stats)
                    stats["total_ms"] = stats["ttft_ms"] = (time.perf_counter() - t0) * 1000
                    if text:
                        yield text
                    return
                for piece in self._events(resp, stats):
                    if not yielded:
                        stats["ttft_ms"] = (time.perf_counter() - t0) * 1000
                    yielded = True
                    yield piece
                stats["total_ms"] = (time.perf_counter() - t0) * 1000
                return
            except TimeoutError as exc:
                raise self._unavailable(f"no data for {self.timeout:g} s") from exc
            except (OSError, http.client.HTTPException, _Transient) as exc:
                transient = exc if isinstance(exc, _Transient) else _Transient(f"connection lost: {exc!r}")
                if yielded:
                    raise BackendUnavailable(
                        f"OpenAI-compatible server at {self.base_url} broke off the reply after it had started "
                        f"({transient.reason}); not retried, since part of it was already shown"
                    ) from exc
                if attempt >= self.retries:
                    raise self._give_up(transient, attempt + 1) from exc
                self._wait(attempt, transient)
                attempt += 1
            finally:
                if conn is not None:
                    conn.close()

    def _events(self, resp, stats: dict) -> Iterator[str]:
        """The content pieces of a server-sent-event stream, up to ``data: [DONE]``."""
        done = False
        for data in _sse_data(resp):
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError as exc:
                raise BackendUnavailable(f"OpenAI-compatible server at {self.base_url} sent a malformed event: {data[:200]!r}") from exc
            if not isinstance(obj, dict):
                raise BackendUnavailable(f"OpenAI-compatible server at {self.base_url} sent a malformed event: {data[:200]!r}")
            if obj.get("error"):
                raise BackendUnavailable(
                    f"OpenAI-compatible server at {self.base_url} failed while generating: {_error_message(data.encode())}"
                )
            self._record_end(stats, obj)
            choices = obj.get("choices") or []
            if not choices:
                continue
            choice = choices[0]
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield piece
            if choice.get("finish_reason"):
                stats["finish_reason"] = choice["finish_reason"]
        if not done and stats["finish_reason"] is None:
            raise _Transient("the stream ended before data: [DONE]")

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
        self._record_end(stats, obj)
        return text
