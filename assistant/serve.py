"""An OpenAI-compatible HTTP server in front of any Tether ``Generator`` (standard library only).

    POST /v1/chat/completions   JSON reply, or server-sent events with "stream": true
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", ...}

Any OpenAI client can then talk to a Tether model, and Tether's own ``OpenAIGenerator`` can talk to
it::

    from assistant.generators.hf import HFGenerator
    from assistant.serve import serve
    serve(HFGenerator(path), port=8000)       # then OpenAIGenerator("http://127.0.0.1:8000/v1", "tether")

One generation runs at a time per server (a lock: model backends are not thread-safe); other
requests wait their turn. Requests are validated up front and every problem is reported at once,
as an OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` with status 400.

Request fields beyond OpenAI's: ``top_k`` and ``repetition_penalty`` (vLLM's names). Fields that
would change the reply but are not supported (``n`` > 1, ``tools``, ``logprobs``, penalties, JSON
``response_format``) are refused, not ignored. ``usage`` counts come from the generator when it
knows them (``last_stats``, ``prompt_tokens()``), else they are estimated at 4 characters a token.

Binds 127.0.0.1 by default. On any other address, pass ``api_key`` so requests must carry
``Authorization: Bearer <api_key>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from assistant.generators.base import Generator, GenParams, Message
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_BODY_BYTES = 8 * 1024 * 1024
_INT_FIELDS = ("max_tokens", "max_completion_tokens", "seed", "top_k", "n")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _approx_tokens(text: str) -> int:
    """OpenAI's rule of thumb: about 4 characters a token."""
    return math.ceil(len(text) / 4)


def _content(value, i: int, problems: list[str]) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                problems.append(f"messages[{i}].content[{j}]: only text parts are supported, not {kind!r}")
        return "".join(texts)
    problems.append(f"messages[{i}].content must be a string or a list of text parts, not {type(value).__name__}")
    return ""


def parse_request(body: bytes, model_name: str) -> tuple[list[Message], GenParams, bool, bool]:
    """(messages, params, stream, include_usage) from a chat completions request body.

    Raises:
        RequestError: 400 listing every problem found, or 404 for a model that is not served.
    """
    try:
        req = json.loads(body)
    except ValueError as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(req, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(req).__name__}")
    if "model" in req and req["model"] != model_name:
        raise RequestError(
            404,
            f"model {req['model']!r} is not served here; this server serves {model_name!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )

    problems: list[str] = []
    messages: list[Message] = []
    raw_messages = req.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        problems.append("messages is required: a non-empty list of {role, content}")
        raw_messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}] must be an object with role and content")
            continue
        role = m.get("role")
        if role not in ROLES:
            problems.append(f"messages[{i}].role ({role!r}) must be one of {', '.join(ROLES)}")
        if "content" not in m or m["content"] is None:
            problems.append(f"messages[{i}].content is required")
            continue
        content = _content(m["content"], i, problems)
        if role in ROLES:
            messages.append(Message(role, content))
    if messages and messages[-1].role == "assistant":
        problems.append(
            "the last message must be from the user or system, not the assistant (prefill is not supported)"
        )

    for name in _INT_FIELDS:
        value = req.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name} ({value!r}) must be an integer")
    for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = req.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{name} ({value!r}) must be a number")
    stream = req.get("stream", False)
    if not isinstance(stream, bool):
        problems.append(f"stream ({stream!r}) must be true or false")
        stream = False
    stream_options = req.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        problems.append("stream_options must be an object")
        stream_options = {}
    include_usage = bool(stream_options.get("include_usage", False))

    stop = req.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        problems.append(f"stop ({req.get('stop')!r}) must be a non-empty string or a list of them")
        stop = []

    if isinstance(req.get("n"), int) and req["n"] != 1:
        problems.append(f"n ({req['n']}) must be 1: one choice per request")
    for name in ("presence_penalty", "frequency_penalty"):
        if isinstance(req.get(name), (int, float)) and req[name] != 0:
            problems.append(f"{name} is not supported (use repetition_penalty)")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if req.get(name):
            problems.append(f"{name} is not supported: this server does not call tools")
    if req.get("logprobs") or req.get("top_logprobs"):
        problems.append("logprobs are not supported")
    response_format = req.get("response_format")
    if response_format and not (isinstance(response_format, dict) and response_format.get("type") == "text"):
        problems.append("response_format other than {'type': 'text'} is not supported")

    if problems:
        raise RequestError(400, "; ".join(problems))

    defaults = GenParams()
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    params = GenParams(
        max_new_tokens=defaults.max_new_tokens if max_tokens is None else max_tokens,
        temperature=defaults.temperature if req.get("temperature") is None else float(req["temperature"]),
        top_p=defaults.top_p if req.get("top_p") is None else float(req["top_p"]),
        top_k=req.get("top_k") or 0,
        repetition_penalty=defaults.repetition_penalty
        if req.get("repetition_penalty") is None
        else float(req["repetition_penalty"]),
        seed=req.get("seed"),
        stop=tuple(stop),
    )
    problems = params.problems()
    if params.temperature > 2:
        problems.append(f"temperature ({params.temperature}) must be <= 2")
    if params.top_k < 0:
        problems.append(f"top_k ({params.top_k}) must be >= 0")
    if params.repetition_penalty <= 0:
        problems.append(f"repetition_penalty ({params.repetition_penalty}) must be > 0")
    if problems:
        # GenParams speaks of max_new_tokens; the client sent max_tokens
        raise RequestError(400, "; ".join(p.replace("max_new_tokens", "max_tokens") for p in problems))
    return messages, params, stream, include_usage


class _Handler(BaseHTTPRequestHandler):
    server: TetherHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    timeout = 300  # seconds an idle keep-alive connection may hold a thread

    # -- plumbing ------------------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: RequestError) -> None:
        log.info("%s %s -> %d: %s", self.command, self.path, err.status, err.message)
        self._send_json(err.status, err.body())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, obj) -> None:
        self._chunk(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._send_error(
            RequestError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")
        )
        return False

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    # -- routes --------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self._path()
        if path == "/health":
            gen = self.server.generator
            self._send_json(
                200,
                {
                    "status": "ok",
                    "model": self.server.model_name,
                    "generator": asdict(gen.identity) if hasattr(gen, "identity") else None,
                },
            )
        elif path == "/v1/models":
            if self._authorized():
                model = {
                    "id": self.server.model_name,
                    "object": "model",
                    "created": self.server.created,
                    "owned_by": "tether",
                }
                self._send_json(200, {"object": "list", "data": [model]})
        elif path == "/v1/chat/completions":
            self._send_error(RequestError(405, "use POST for /v1/chat/completions"))
        else:
            self._send_error(
                RequestError(
                    404,
                    f"no route {path}; try POST /v1/chat/completions, GET /v1/models or GET /health",
                    code="not_found",
                )
            )

    def do_POST(self) -> None:
        path = self._path()
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # the body's end is unknown: the connection cannot be reused
            self._send_error(RequestError(411, "send the body with a Content-Length header"))
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_error(RequestError(413, f"the body ({length} bytes) is larger than {MAX_BODY_BYTES} bytes"))
            return
        body = self.rfile.read(int(length))
        if path != "/v1/chat/completions":
            self._send_error(
                RequestError(404, f"no route POST {path}; try POST /v1/chat/completions", code="not_found")
            )
            return
        if not self._authorized():
            return
        try:
            messages, params, stream, include_usage = parse_request(body, self.server.model_name)
        except RequestError as err:
            self._send_error(err)
            return
        with self.server.lock:
            self._complete(messages, params, stream, include_usage)

    # -- generation (under the lock) ----------------------------------------------------------------

    def _complete(self, messages: list[Message], params: GenParams, stream: bool, include_usage: bool) -> None:
        gen = self.server.generator
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        t0 = time.perf_counter()
        pieces: Iterator[str] = iter(())
        try:
            try:
                pieces = iter(gen.stream(messages, params))
                first = next(pieces, None)  # before any header: early failures get a proper status
            except ConfigError as exc:
                self._send_error(RequestError(400, "; ".join(exc.problems)))
                return
            except BackendUnavailable as exc:
                log.warning("generator unavailable: %s", exc)
                self._send_error(RequestError(503, str(exc), type_="server_error"))
                return
            except Exception as exc:
                log.exception("generation failed")
                self._send_error(RequestError(500, f"generation failed: {exc!r}", type_="server_error"))
                return
            head = [] if first is None else [first]
            if stream:
                text = self._stream(rid, created, head, pieces, include_usage, messages, params)
            else:
                text = self._whole(rid, created, head, pieces, messages, params)
        except (BrokenPipeError, ConnectionResetError):
            log.info("%s: the client went away; generation stopped", rid)
            self.close_connection = True
            return
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # stops the decode loop when the client left early
        if text is not None:
            log.info(
                "%s: %d messages -> %d chars in %.0f ms%s",
                rid,
                len(messages),
                len(text),
                (time.perf_counter() - t0) * 1000,
                " (stream)" if stream else "",
            )

    def _whole(self, rid, created, head, pieces, messages, params) -> str | None:
        try:
            text = "".join(head) + "".join(pieces)
        except Exception as exc:
            log.exception("%s: generation failed", rid)
            status = 503 if isinstance(exc, BackendUnavailable) else 500
            self._send_error(RequestError(status, f"generation failed: {exc}", type_="server_error"))
            return None
        self._send_json(
            200,
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": self.server.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": _finish_reason(self.server.generator, params),
                    }
                ],
                "usage": _usage(self.server.generator, messages, text),
            },
        )
        return text

    def _stream(self, rid, created, head, pieces, include_usage, messages, params) -> str | None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.server.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        self._event(chunk({"role": "assistant", "content": ""}))
        sent: list[str] = []
        try:
            for piece in _chain(head, pieces):
                if piece:
                    sent.append(piece)
                    self._event(chunk({"content": piece}))
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:
            # headers are gone: report in the stream, as vLLM does; no [DONE] so it does not look finished
            log.exception("%s: generation failed mid-stream", rid)
            self._event(
                {"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}}
            )
            self._chunk(b"")
            self.close_connection = True
            return None
        text = "".join(sent)
        self._event(chunk({}, _finish_reason(self.server.generator, params)))
        if include_usage:
            self._event(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.server.model_name,
                    "choices": [],
                    "usage": _usage(self.server.generator, messages, text),
                }
            )
        self._event(b"[DONE]")
        self._chunk(b"")  # end of the chunked body
        return text


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _stats(gen) -> dict:
    stats = getattr(gen, "last_stats", None)
    return stats if isinstance(stats, dict) else {}


def _finish_reason(gen, params: GenParams) -> str:
    """ "length" when the generator says it used all of max_tokens, else "stop"."""
    stats = _stats(gen)
    if stats.get("finish_reason") in ("stop", "length"):
        return stats["finish_reason"]
    new = stats.get("new_tokens")
    return "length" if isinstance(new, int) and new >= params.max_new_tokens else "stop"


def _usage(gen, messages: Sequence[Message], text: str) -> dict:
    """Token counts from the generator's ``last_stats`` or ``prompt_tokens()``, else estimated."""
    stats = _stats(gen)
    prompt = stats.get("prompt_tokens")
    if not isinstance(prompt, int):
        counter = getattr(gen, "prompt_tokens", None)
        prompt = counter(messages) if callable(counter) else sum(_approx_tokens(m.content) for m in messages)
    completion = stats.get("new_tokens")
    if not isinstance(completion, int):
        completion = _approx_tokens(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class TetherHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the generator, its lock and the served model name."""

    daemon_threads = True

    def __init__(self, address, generator: Generator, model_name: str, api_key: str | None):
        self.generator = generator
        self.model_name = model_name
        self.api_key = api_key
        self.lock = threading.Lock()  # one generation at a time; waiting requests queue here
        self.created = int(time.time())
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(
    generator: Generator,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = "tether",
    api_key: str | None = None,
) -> TetherHTTPServer:
    """A bound, not yet running server for ``generator`` (port 0 picks a free port: see ``.url``).

    Raises:
        ConfigError: ``generator`` has no ``stream`` method, or ``model_name`` is empty.
    """
    problems = []
    if not callable(getattr(generator, "stream", None)):
        problems.append(
            f"the generator ({type(generator).__name__}) has no stream(messages, params) method; serve an hf or openai generator"
        )
    if not model_name:
        problems.append("model_name must not be empty")
    if problems:
        raise ConfigError(problems)
    if host not in _LOOPBACK and api_key is None:
        log.warning("serving on %s without an api_key: anyone who can reach this address can use the model", host)
    return TetherHTTPServer((host, port), generator, model_name, api_key)


def serve(
    generator: Generator,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "tether",
    api_key: str | None = None,
) -> None:
    """Serve ``generator`` until interrupted (Ctrl-C)."""
    server = make_server(generator, host, port, model_name, api_key)
    log.info("serving %s (%s) at %s", model_name, getattr(generator, "identity", None), server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
