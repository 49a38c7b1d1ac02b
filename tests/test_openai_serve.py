"""``assistant.serve`` (an OpenAI-compatible server around any Generator) and
``OpenAIGenerator`` (its client), talking to each other for real on 127.0.0.1.

Generators: ``EchoGenerator`` below (a real generator with no model: it streams the last user
message back word by word), and ``HFGenerator`` on the tiny random Llama of ``tests/tiny_llm.py``.
Failure modes (5xx, cut streams, silence) come from a scripted stub server; the retries and
timeouts are the ``openai`` package's own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assistant.generators.base import GeneratorIdentity, GenParams, Message, generate
from assistant.generators.openai_compat import OpenAIGenerator, api_base_url, chat_completions_url
from assistant.serve import RAG_MODEL, SOURCES_MARK, ServeLimits, check_bind, make_server, strip_reply
from tether.config import HFConfig, OpenAIConfig
from tether.errors import BackendUnavailable, ConfigError

MESSAGES = [
    Message("system", "Answer from the context."),
    Message("user", "Context: The canteen opens at 07:45.\nQuestion: When does the canteen open?"),
]


class EchoGenerator:
    """Streams the last user message back, one word (with its trailing space) per piece: up to
    ``max_new_tokens`` words, cut before the first ``stop`` string. Records what it was asked and
    how many generations ever ran at once."""

    def __init__(self, delay: float = 0.0):
        self.identity = GeneratorIdentity(backend="echo", model="echo")
        self.delay = delay
        self.last_stats: dict = {}
        self.received: list[GenParams] = []
        self.active = 0
        self.max_active = 0
        self.pieces_sent: list[int] = []
        self._count = threading.Lock()

    @staticmethod
    def reply(messages, params: GenParams = GenParams()) -> str:
        text = next(m.content for m in reversed(messages) if m.role == "user")
        words = re.findall(r"\S+\s*", text)[: params.max_new_tokens]
        text = "".join(words)
        for stop in params.stop:
            if stop in text:
                text = text[: text.index(stop)]
        return text

    def stream(self, messages, params):
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.received.append(params)
        sent = 0
        try:
            words = re.findall(r"\S+\s*", next(m.content for m in reversed(messages) if m.role == "user"))
            n = min(len(words), params.max_new_tokens)
            self.last_stats = {"prompt_tokens": sum(len(m.content.split()) for m in messages), "new_tokens": n}
            text = self.reply(messages, params)
            for piece in re.findall(r"\S+\s*", text):
                if self.delay:
                    time.sleep(self.delay)
                sent += 1
                yield piece
        finally:
            self.pieces_sent.append(sent)
            with self._count:
                self.active -= 1


@contextmanager
def running(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def served(generator, **kwargs):
    """An in-process ``tether serve`` app (uvicorn in a thread) on a free loopback port."""
    with make_server(generator, "127.0.0.1", 0, **kwargs) as server:
        yield server


def client(server, **kwargs) -> OpenAIGenerator:
    kwargs.setdefault("timeout", 10)
    return OpenAIGenerator(server.url, kwargs.pop("model", "tether"), **kwargs)


def http(url: str, body=None, *, method=None, headers=None) -> tuple[int, dict | bytes, dict]:
    """(status, parsed JSON or raw bytes, headers) of one request, errors included."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw, hdrs = resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        status, raw, hdrs = err.code, err.read(), {k.lower(): v for k, v in err.headers.items()}
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw, hdrs


def sse_events(raw: bytes) -> list:
    return [ev[len("data: ") :] for ev in raw.decode().split("\n\n") if ev.startswith("data: ")]


def chat_body(messages=MESSAGES, **extra) -> dict:
    return {"model": "tether", "messages": [{"role": m.role, "content": m.content} for m in messages], **extra}


# -- round trips -----------------------------------------------------------------------------------


def test_stream_round_trip_equals_direct_output():
    echo = EchoGenerator()
    direct = generate(echo, MESSAGES, GenParams())
    with served(echo) as server:
        gen = client(server)
        pieces = list(gen.stream(MESSAGES, GenParams()))
    assert "".join(pieces) == direct == EchoGenerator.reply(MESSAGES)
    assert len(pieces) == len(direct.split())  # streamed piece by piece, not in one block
    assert gen.identity == GeneratorIdentity(backend="openai", model="tether", decoding="greedy")
    assert gen.last_stats["finish_reason"] == "stop"
    assert gen.last_stats["new_tokens"] == len(pieces)  # usage from the include_usage chunk
    assert gen.last_stats["prompt_tokens"] == echo.last_stats["prompt_tokens"]


def test_non_streaming_round_trip_equals_direct_output():
    echo = EchoGenerator()
    direct = generate(echo, MESSAGES, GenParams())
    with served(echo) as server:
        assert client(server).complete(MESSAGES, GenParams()) == direct
        status, reply, headers = http(server.url + "/chat/completions", chat_body())
    assert status == 200 and headers["content-type"] == "application/json"
    assert reply["id"].startswith("chatcmpl-") and isinstance(reply["created"], int)
    assert reply["object"] == "chat.completion" and reply["model"] == "tether"
    assert reply["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": direct}, "finish_reason": "stop"}
    ]
    n = len(direct.split())
    assert reply["usage"] == {
        "prompt_tokens": echo.last_stats["prompt_tokens"],
        "completion_tokens": n,
        "total_tokens": reply["usage"]["prompt_tokens"] + n,
    }


def test_stream_wire_format():
    with served(EchoGenerator()) as server:
        status, raw, headers = http(
            server.url + "/chat/completions",
            chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=3),
        )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == EchoGenerator.reply(MESSAGES, GenParams(max_new_tokens=3))
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_params_cross_the_wire_unchanged():
    echo = EchoGenerator()
    params = GenParams(
        max_new_tokens=4, temperature=0.5, top_p=0.9, top_k=5, repetition_penalty=1.2, seed=7, stop=("opens",)
    )
    with served(echo) as server:
        gen = client(server)
        text = "".join(gen.stream(MESSAGES, params))
    assert echo.received == [params]
    assert text == "Context: The canteen "
    assert gen.identity.decoding == "sample"


def test_models_and_health():
    echo = EchoGenerator()
    with served(echo, model_name="tiny") as server:
        base = server.url.removesuffix("/v1")
        status, models, _ = http(server.url + "/models")
        assert status == 200 and models["object"] == "list"
        assert [(m["id"], m["object"]) for m in models["data"]] == [("tiny", "model")]
        status, health, _ = http(base + "/health")
        assert status == 200 and health["status"] == "ok"
        assert health["models"] == [{"id": "tiny", "backend": "echo", "adapter": None}]  # names, never paths
        assert health["queue"] == {"generating": 0, "waiting": 0, "max": 8}
        assert client(server).models() == ["tiny"]
        # the client's model name must be one the server lists
        with pytest.raises(BackendUnavailable, match=r"HTTP 404: model 'tether' is not served here.*/v1/models"):
            list(client(server).stream(MESSAGES, GenParams()))
        assert "".join(client(server, model="tiny").stream(MESSAGES, GenParams())) == EchoGenerator.reply(MESSAGES)


# -- the server refuses bad requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"model": "tether"}, "messages is required"),
        ({"messages": []}, "messages is required"),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            r"messages\[0\].role \('robot'\) must be one of system, user, assistant",
        ),
        ({"messages": [{"role": "tool", "content": "hi"}]}, r"messages\[0\].role \('tool'\)"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\].content is required"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "only text parts"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "last message"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, r"temperature \(-1\) must be >= 0"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature .* must be a number"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, r"max_tokens \(0\) must be >= 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, "max_tokens .* must be an integer"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, r"top_p \(0\) must be > 0"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, r"n \(2\) must be 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop .* must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream .* must be true or false"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools is not supported"),
    ],
)
def test_bad_requests_get_400_with_an_error_object(body, message):
    echo = EchoGenerator()
    with served(echo) as server:
        status, reply, _ = http(server.url + "/chat/completions", body)
    assert status == 400
    assert set(reply["error"]) >= {"message", "type"} and reply["error"]["type"] == "invalid_request_error"
    assert re.search(message, reply["error"]["message"]), reply
    assert echo.received == []  # nothing was generated


def test_every_problem_is_reported_at_once_and_routes_are_checked():
    with served(EchoGenerator()) as server:
        body = {"messages": [{"role": "robot", "content": "hi"}], "temperature": "hot", "n": 3}
        status, reply, _ = http(server.url + "/chat/completions", body)
        assert status == 400 and reply["error"]["message"].count(";") == 2
        status, reply, _ = http(server.url + "/chat/completions", chat_body() | {"model": "gpt-4o"})
        assert status == 404 and reply["error"]["code"] == "model_not_found"
        assert http(server.url + "/completions", chat_body())[0] == 404
        status, reply, _ = http(server.url + "/chat/completions")
        assert status == 405 and "POST" in reply["error"]["message"]
        # text parts are accepted (the OpenAI SDK may send them); the connection stays usable
        parts = {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]
        }
        status, reply, _ = http(server.url + "/chat/completions", parts)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "a b"


def test_api_key_is_required_when_set():
    with served(EchoGenerator(), api_key="s3cret") as server:
        assert http(server.url + "/models")[0] == 401
        status, reply, _ = http(server.url + "/chat/completions", chat_body())
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        with pytest.raises(BackendUnavailable, match="HTTP 401.*openai.api_key"):
            list(client(server, api_key="wrong").stream(MESSAGES, GenParams()))
        with pytest.raises(BackendUnavailable, match="HTTP 401"):
            client(server).models()  # no key configured: none that the server accepts is sent
        assert "".join(client(server, api_key="s3cret").stream(MESSAGES, GenParams())) == EchoGenerator.reply(MESSAGES)
        gen = OpenAIGenerator.from_config(OpenAIConfig(url=server.url, model="tether", api_key="s3cret", timeout_s=5))
        assert gen.models() == ["tether"]


class FailingGenerator:
    """Raises ``error`` after ``after`` pieces."""

    identity = GeneratorIdentity(backend="failing", model="none")

    def __init__(self, error: Exception, after: int = 0):
        self.error, self.after = error, after

    def stream(self, messages, params):
        for i in range(self.after):
            yield f"w{i} "
        raise self.error


def test_generator_errors_become_http_errors():
    with served(FailingGenerator(ConfigError(["the prompt (900 tokens) does not fit"]))) as server:
        status, reply, _ = http(server.url + "/chat/completions", chat_body())
        assert status == 400 and "does not fit" in reply["error"]["message"]
    with served(FailingGenerator(BackendUnavailable("no GPU today"))) as server:
        status, reply, _ = http(server.url + "/chat/completions", chat_body())
        assert status == 503 and reply["error"]["type"] == "server_error"
    with served(FailingGenerator(RuntimeError("CUDA out of memory"), after=2)) as server:
        status, reply, _ = http(server.url + "/chat/completions", chat_body())
        assert status == 500 and "out of memory" in reply["error"]["message"]
        got = []
        with pytest.raises(BackendUnavailable, match="failed while generating: generation failed: CUDA out of memory"):
            for piece in client(server, max_retries=0).stream(MESSAGES, GenParams()):
                got.append(piece)
        assert got == ["w0 ", "w1 "]


def test_make_server_refuses_a_non_generator():
    with pytest.raises(ConfigError, match="has no stream"):
        make_server(object())


# -- concurrency ---------------------------------------------------------------------------------------


def test_concurrent_requests_queue_and_all_complete():
    echo = EchoGenerator(delay=0.005)
    questions = [[Message("user", f"question {i}: " + " ".join(f"w{i}_{j}" for j in range(8)))] for i in range(4)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    with served(echo) as server:
        gen = client(server)

        def ask(i):
            try:
                params = GenParams()
                results[i] = "".join(gen.stream(questions[i], params)) if i % 2 else gen.complete(questions[i], params)
            except BaseException as exc:  # surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert results == {i: EchoGenerator.reply(q) for i, q in enumerate(questions)}
    assert echo.max_active == 1  # the lock: one generation at a time


def test_a_client_that_leaves_mid_stream_stops_the_generation():
    echo = EchoGenerator(delay=0.01)
    long = [Message("user", " ".join(f"w{j}" for j in range(300)))]
    with served(echo) as server:
        gen = client(server)
        pieces = gen.stream(long, GenParams(max_new_tokens=300))
        assert next(pieces) == "w0 "
        pieces.close()  # closes the connection
        # the next request gets the worker once the server notices (between tokens), not after 300 of them
        t0 = time.perf_counter()
        assert "".join(gen.stream(MESSAGES, GenParams())) == EchoGenerator.reply(MESSAGES)
        assert time.perf_counter() - t0 < 1.5
    assert echo.pieces_sent[0] < 100 and echo.max_active == 1


def raw_http(server_url: str, request: bytes, *, read_timeout: float = 10) -> tuple[int, bytes]:
    """Send ``request`` bytes on a fresh socket; (status, body) of the reply (status 0: no reply)."""
    host, port = server_url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_hostile_bodies_get_openai_style_400s():
    echo = EchoGenerator()
    hi = b'{"messages": [{"role": "user", "content": "hi"}]'
    with served(echo, limits=ServeLimits(max_body_bytes=4096)) as server:
        url = server.url + "/chat/completions"
        cases = [
            (hi + b', "temperature": NaN}', 400, "NaN is not a JSON number"),
            (hi + b', "top_p": -Infinity}', 400, "-Infinity is not a JSON number"),
            (hi + b', "temperature": 1e999}', 400, r"temperature \(inf\) must be a finite number"),
            (hi + b', "user": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "nests deeper than 32 levels"),
            (b"[" * 2000 + b"]" * 2000, 400, "nests deeper than 32 levels"),  # beyond the parser's recursion
            (hi + b', "user": "' + b"x" * 5000 + b'"}', 413, "larger than 4096 bytes"),
            (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid JSON"),
        ]
        for body, status, message in cases:
            got, reply, headers = http(url, body)
            assert got == status and headers["content-type"] == "application/json", (body[:60], reply)
            assert re.search(message, reply["error"]["message"]), reply
        assert http(url, chat_body())[0] == 200  # the server is still fine
    assert len(echo.received) == 1


def test_malformed_http_is_answered_with_json_not_a_dropped_connection():
    with served(EchoGenerator(), limits=ServeLimits(timeout_s=1)) as server:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for bad in (b"abc", b"-5", b"1e3", b"10, 12"):
            status, body = raw_http(server.url, head + b"Content-Length: " + bad + b"\r\n\r\n{}")
            assert status == 400, bad
            assert json.loads(body)["error"]["message"].startswith("malformed HTTP request")
        # a body shorter than its Content-Length: the deadline answers, the connection is not held
        t0 = time.perf_counter()
        status, body = raw_http(server.url, head + b"Content-Length: 500\r\n\r\n{}")
        assert status == 408 and "did not arrive in time" in json.loads(body)["error"]["message"]
        assert time.perf_counter() - t0 < 3


def test_unknown_fields_are_logged_and_reply_changing_ones_refused(caplog):
    echo = EchoGenerator()
    with served(echo) as server:
        url = server.url + "/chat/completions"
        with caplog.at_level(logging.WARNING, logger="assistant.serve"):
            status, reply, _ = http(url, chat_body(metadata={"a": 1}, store=False, frobnicate=3, user="u1"))
        assert status == 200 and reply["choices"][0]["message"]["content"] == EchoGenerator.reply(MESSAGES)
        assert "present in the request but ignored: frobnicate, metadata, store" in caplog.text
        body = chat_body(logit_bias={"42": 5}, presence_penalty=0.5, response_format={"type": "json_object"})
        status, reply, _ = http(url, body)
        assert status == 400
        for name in ("logit_bias", "presence_penalty", "response_format"):
            assert name in reply["error"]["message"]
        # the values that change nothing are accepted
        harmless = chat_body(presence_penalty=0, logprobs=False, tools=[], response_format={"type": "text"}, n=1)
        assert http(url, harmless)[0] == 200
    assert len(echo.received) == 2


def test_max_tokens_above_the_ceiling_is_refused_and_the_default_is_bounded():
    echo = EchoGenerator()
    with served(echo, limits=ServeLimits(max_tokens=50, default_max_tokens=20)) as server:
        url = server.url + "/chat/completions"
        status, reply, _ = http(url, chat_body(max_tokens=51))
        assert status == 400 and "max_tokens (51) is above this server's ceiling (50" in reply["error"]["message"]
        assert http(url, chat_body(max_completion_tokens=10_000_000))[0] == 400
        assert http(url, chat_body(max_tokens=50))[0] == 200
        assert http(url, chat_body())[0] == 200
    assert [p.max_new_tokens for p in echo.received] == [50, 20]


def test_a_full_queue_answers_503_with_retry_after_and_never_resets():
    echo = EchoGenerator(delay=0.02)
    results: list = []
    with served(echo, limits=ServeLimits(max_queue=2, retry_after_s=7)) as server:
        url = server.url + "/chat/completions"

        def one(i):
            try:
                status, reply, headers = http(url, chat_body([Message("user", f"q{i} a b c d")]))
                results.append((status, reply, headers))
            except Exception as exc:  # a reset or a timeout: asserted below
                results.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        status, health, _ = http(server.url.removesuffix("/v1") + "/health")
    assert len(results) == 50 and not [r for r in results if isinstance(r, Exception)]
    statuses = [r[0] for r in results]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 3
    for status, reply, headers in results:
        if status == 503:
            assert headers["retry-after"] == "7" and reply["error"]["code"] == "queue_full"
    assert echo.max_active == 1 and health["queue"]["waiting"] == 0


def test_an_abandoned_non_streaming_request_stops_and_the_next_is_served_promptly():
    echo = EchoGenerator(delay=0.02)
    long = " ".join(f"w{j}" for j in range(300))  # 300 pieces: 6 s if it ran to the end
    body = json.dumps(chat_body([Message("user", long)], max_tokens=300)).encode()
    with served(echo) as server:
        host, port = server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            time.sleep(0.3)  # it is generating; then the client leaves without reading
        t0 = time.perf_counter()
        status, reply, _ = http(server.url + "/chat/completions", chat_body())
        waited = time.perf_counter() - t0
    assert status == 200 and reply["choices"][0]["message"]["content"] == EchoGenerator.reply(MESSAGES)
    assert waited < 1.5, waited
    assert echo.pieces_sent[0] < 60 and echo.max_active == 1


def test_the_request_timeout_ends_a_reply_that_takes_too_long():
    echo = EchoGenerator(delay=0.05)
    long = [Message("user", " ".join(f"w{j}" for j in range(200)))]
    with served(echo, limits=ServeLimits(timeout_s=0.5)) as server:
        url = server.url + "/chat/completions"
        t0 = time.perf_counter()
        status, reply, _ = http(url, chat_body(long, max_tokens=200))
        assert status == 504 and reply["error"]["code"] == "timeout"
        assert time.perf_counter() - t0 < 1.5
        status, raw, _ = http(url, chat_body(long, max_tokens=200, stream=True))
        events = sse_events(raw)
        assert status == 200 and "[DONE]" not in events  # it did not finish, and does not look finished
        assert "timeout" in json.loads(events[-1])["error"]["message"]
    assert all(n < 40 for n in echo.pieces_sent)


def test_a_non_loopback_address_needs_an_api_key():
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigError, match=r"refusing to serve on .* without an API key.*--api-key.*--insecure"):
            make_server(EchoGenerator(), host, 0)
        check_bind(host, "k")  # a key, or an explicit --insecure, allows it
        check_bind(host, None, insecure=True)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)


class ScriptedEngine:
    """A ``ChatEngine`` stand-in that streams a draft, replaces it, then answers with one citation."""

    def __init__(self):
        from assistant.types import Answer, Citation
        from retrieval.search import SearchHit

        hit = SearchHit(
            "p1",
            "Leave is 25 days.",
            "leave.md",
            "Annual leave",
            (0, 17),
            None,
            1.0,
            1,
            None,
            None,
            None,
            None,
            None,
            1,
        )
        self.generator = EchoGenerator()
        self.asked: list = []
        self.answer = Answer(
            text="Leave is 25 days [1].",
            refused=False,
            question="",
            query="",
            passages=(hit,),
            citations=(Citation(1, "p1", "leave.md", "Leave is 25 days [1].", hit.text, (0, 17), True, 0.9),),
            groundedness=1.0,
            generator=self.generator.identity,
            latency_ms={},
            turn_id="t1",
        )

    def stream(self, question, conversation):
        from assistant.events import Final, Replace, Token

        self.asked.append((question, [(t.question, t.answer) for t in conversation.turns]))
        yield Token("Leave is ")
        yield Token("20 days.")
        yield Replace("", "regenerating")
        yield Token("Leave: 25 days")
        yield Final(self.answer)


def test_tether_rag_answers_with_citations_and_streams_replacements():
    engine = ScriptedEngine()
    history = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello [1]." + SOURCES_MARK + "[1] x (y)"},
        {"role": "user", "content": "How long is leave?"},
    ]
    with served(None, engine=engine) as server:
        url = server.url + "/chat/completions"
        status, reply, _ = http(url, {"model": RAG_MODEL, "messages": history})
        assert status == 200 and reply["model"] == RAG_MODEL
        assert (
            reply["choices"][0]["message"]["content"]
            == "Leave is 25 days [1].\n\nSources:\n[1] Annual leave (leave.md)"
        )
        assert [(c["n"], c["source"], c["title"], c["supported"]) for c in reply["citations"]] == [
            (1, "leave.md", "Annual leave", True)
        ]
        assert reply["tether"]["turn_id"] == "t1" and reply["tether"]["refused"] is False
        assert engine.asked[0] == ("How long is leave?", [("Hi", "Hello [1].")])  # the footer is not history

        status, raw, _ = http(url, {"model": RAG_MODEL, "messages": history[-1:], "stream": True})
        chunks = [json.loads(e) for e in sse_events(raw)[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == (
            "Leave is 20 days.\n\n(regenerating)\n\nLeave: 25 days"
            "\n\nwith citations: Leave is 25 days [1].\n\nSources:\n[1] Annual leave (leave.md)"
        )
        last = chunks[-1]
        assert last["choices"][0]["finish_reason"] == "stop" and last["citations"][0]["n"] == 1
        assert strip_reply(text) == "Leave is 25 days [1]."

        # decoding the pipeline sets itself is refused, by name; the raw model is not served here
        status, reply, _ = http(url, {"model": RAG_MODEL, "messages": history[-1:], "top_p": 0.5, "seed": 1})
        assert status == 400 and "top_p is not supported by tether-rag" in reply["error"]["message"]
        assert "seed" in reply["error"]["message"]
        assert http(url, {"model": "tether", "messages": history[-1:]})[0] == 404
        assert http(url, {"messages": history[-1:]})[0] == 200  # no model: the first one served


# -- the client against a stub: failures and retries ----------------------------------------------------


def sse(*chunks, done=True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(text=None, finish=None) -> dict:
    d = {} if text is None else {"content": text}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


OK_STREAM = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, delta("Hello"), delta(" world"), delta(finish="stop")
)


class StubServer(ThreadingHTTPServer):
    """Answers each POST with the next scripted action (the last one repeats); keeps the bodies
    and the headers of every request."""

    daemon_threads = True

    def __init__(self, script):
        self.script = list(script)
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        super().__init__(("127.0.0.1", 0), _StubHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _StubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        action = self.server.script[min(len(self.server.bodies), len(self.server.script)) - 1]
        action(self)


def reply(status: int, body: bytes, content_type="text/event-stream", headers=()):
    def act(h):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()  # HTTP/1.0: the body ends when the connection closes
        h.wfile.write(body)

    return act


def error(status: int, message: str, headers=(("retry-after-ms", "10"),)):
    """An error reply; by default it asks for a 10 ms wait, so the client's retries are quick."""
    return reply(
        status,
        json.dumps({"error": {"message": message, "type": "server_error"}}).encode(),
        "application/json",
        headers,
    )


def hang(seconds: float):
    return lambda h: time.sleep(seconds)


def drop(h):
    """Close the connection without a reply."""
    h.close_connection = True


def trickle(body: bytes, then_sleep: float):
    """A stream that sends ``body``, then nothing for ``then_sleep`` seconds."""

    def act(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
        time.sleep(then_sleep)

    return act


@contextmanager
def stub(*script):
    with running(StubServer(script)) as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_fails_fast_and_names_the_url():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    gen = OpenAIGenerator(url, "tether", max_retries=1, timeout=1)
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable) as err:
        list(gen.stream(MESSAGES, GenParams()))
    assert time.perf_counter() - t0 < 2  # one retry after the client's own backoff (0.5 s at most)
    message = str(err.value)
    assert message.startswith(f"OpenAI-compatible server at {url} is not answering (cannot connect")
    assert "Connection refused" in message
    assert "2 attempts" in message and message.endswith("start it, or choose another generator with --generator")
    with pytest.raises(BackendUnavailable, match=re.escape(url)):
        gen.complete(MESSAGES, GenParams())
    with pytest.raises(BackendUnavailable, match=r"is not answering \(cannot connect.*--generator"):
        gen.models()


def test_5xx_and_429_are_retried_then_succeed():
    with stub(
        error(500, "boom"), error(429, "slow down", headers=[("Retry-After", "0")]), reply(200, OK_STREAM)
    ) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5, max_retries=2)
        t0 = time.perf_counter()
        assert list(gen.stream(MESSAGES, GenParams())) == ["Hello", " world"]
        elapsed = time.perf_counter() - t0
    assert len(server.bodies) == 3
    # the openai package's retry loop did it: it numbers its attempts, and waited its own backoff
    # after the 429 (Retry-After: 0 asks for none, so the client falls back to its second backoff, 0.75-1 s)
    assert [h.get("x-stainless-retry-count") for h in server.headers] == ["0", "1", "2"]
    assert 0.3 < elapsed < 3


def test_a_dropped_connection_is_retried_then_succeeds():
    with stub(drop, reply(200, OK_STREAM)) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5, max_retries=1)
        assert "".join(gen.stream(MESSAGES, GenParams())) == "Hello world"
    assert len(server.bodies) == 2


def test_no_retries_when_max_retries_is_0():
    with stub(error(503, "loading model"), reply(200, OK_STREAM)) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5, max_retries=0)
        with pytest.raises(BackendUnavailable, match=r"is not answering \(HTTP 503: loading model\): start it"):
            list(gen.stream(MESSAGES, GenParams()))
    assert len(server.bodies) == 1


def test_500_twice_then_success_with_complete():
    ok = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    ).encode()
    with stub(error(500, "boom"), error(502, "bad gateway"), reply(200, ok, "application/json")) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        assert gen.complete(MESSAGES, GenParams()) == "Hi"
    assert len(server.bodies) == 3


def test_5xx_until_retries_run_out():
    with stub(error(503, "loading model")) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5, max_retries=1)
        with pytest.raises(BackendUnavailable, match=r"is not answering \(HTTP 503: loading model; 2 attempts\)"):
            list(gen.stream(MESSAGES, GenParams()))
    assert len(server.bodies) == 2


def test_4xx_is_not_retried_and_carries_the_server_message():
    with stub(error(400, "This model's maximum context length is 2048 tokens")) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        with pytest.raises(
            BackendUnavailable,
            match=r"refused the request \(HTTP 400: This model's maximum context length is 2048 tokens\)",
        ):
            list(gen.stream(MESSAGES, GenParams()))
    assert len(server.bodies) == 1


def test_a_stream_cut_after_text_is_not_retried():
    with stub(reply(200, sse(delta("Hel"), done=False))) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        got = []
        with pytest.raises(BackendUnavailable, match="broke off the reply after it had started"):
            for piece in gen.stream(MESSAGES, GenParams()):
                got.append(piece)
    assert got == ["Hel"] and len(server.bodies) == 1


def test_a_stream_cut_after_its_headers_is_not_retried():
    # the openai package retries requests, not streams it has started to read
    with stub(
        reply(200, sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, done=False)), reply(200, OK_STREAM)
    ) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        with pytest.raises(BackendUnavailable, match=r"is not answering \(the stream ended before the reply finished"):
            list(gen.stream(MESSAGES, GenParams()))
    assert len(server.bodies) == 1


def test_silence_times_out_and_is_retried_by_the_client():
    with stub(hang(3)) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=0.3, max_retries=0)
        t0 = time.perf_counter()
        with pytest.raises(BackendUnavailable, match=r"is not answering \(no response within 0.3 s\)"):
            list(gen.stream(MESSAGES, GenParams()))
        assert time.perf_counter() - t0 < 2
        assert len(server.bodies) == 1
    with stub(hang(3)) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=0.3, max_retries=1)
        t0 = time.perf_counter()
        with pytest.raises(BackendUnavailable, match=r"no response within 0.3 s; 2 attempts"):
            gen.complete(MESSAGES, GenParams())
        assert time.perf_counter() - t0 < 3
        assert len(server.bodies) == 2


def test_a_json_reply_to_a_stream_request_and_a_malformed_event():
    ok = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    ).encode()
    with stub(reply(200, ok, "application/json")) as server:  # a server that ignores "stream": true
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        assert list(gen.stream(MESSAGES, GenParams())) == ["Hi"] and gen.last_stats["finish_reason"] == "stop"
    with stub(reply(200, b"data: {not json\n\n")) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=5)
        with pytest.raises(BackendUnavailable, match="sent a malformed event"):
            list(gen.stream(MESSAGES, GenParams()))


def test_silence_after_the_reply_started_is_not_retried():
    with stub(trickle(sse(delta("Hel"), done=False), then_sleep=3)) as server:
        gen = OpenAIGenerator(server.url, "tether", timeout=0.3, max_retries=2)
        got = []
        with pytest.raises(BackendUnavailable, match=r"broke off the reply after it had started \(no data for 0.3 s\)"):
            for piece in gen.stream(MESSAGES, GenParams()):
                got.append(piece)
    assert got == ["Hel"] and len(server.bodies) == 1


def test_sse_variants_and_the_request_body():
    # llama.cpp/Ollama-style details: comments, "data:" without a space, CRLF, null content,
    # usage in the last chunk, finish_reason but no [DONE]
    body = (
        b": ping\r\n\r\n"
        b'data:{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\r\n\r\n'
        b"event: message\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"caf\\u00e9 \\u2713"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":11,"completion_tokens":2}}\n\n'
    )
    with stub(reply(200, body)) as server:
        gen = OpenAIGenerator(server.url, "my-model", api_key="k", timeout=5)
        params = GenParams(max_new_tokens=2, temperature=0.7, top_p=0.8, seed=3, stop=("\n\n", "END"))
        assert list(gen.stream(MESSAGES, params)) == ["café ✓"]
    assert gen.last_stats | {"ttft_ms": 0, "total_ms": 0} == {
        "finish_reason": "length",
        "prompt_tokens": 11,
        "new_tokens": 2,
        "ttft_ms": 0,
        "total_ms": 0,
    }
    assert server.bodies == [
        {
            "model": "my-model",
            "messages": [
                {"role": "system", "content": MESSAGES[0].content},
                {"role": "user", "content": MESSAGES[1].content},
            ],
            "stream": True,
            "max_tokens": 2,
            "temperature": 0.7,
            "top_p": 0.8,
            "seed": 3,
            "stop": ["\n\n", "END"],
            "stream_options": {"include_usage": True},
        }
    ]


def test_constructor_and_params_are_validated():
    with pytest.raises(ConfigError) as err:
        OpenAIGenerator("localhost:8000", "", timeout=0, max_retries=-1)
    assert len(err.value.problems) == 4
    gen = OpenAIGenerator("http://127.0.0.1:9/v1", "tether")
    with pytest.raises(ConfigError, match="cad_alpha .* use the hf generator"):
        list(gen.stream(MESSAGES, GenParams(cad_alpha=0.5)))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        gen.complete(MESSAGES, GenParams(max_new_tokens=0))


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("https://h/openai/v1", "https://h/openai/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base, url):
    assert chat_completions_url(base) == url
    assert api_base_url(base) == url.removesuffix("/chat/completions")


def test_from_config_needs_a_url():
    with pytest.raises(ConfigError, match="openai.url is not set"):
        OpenAIGenerator.from_config(OpenAIConfig())
    gen = OpenAIGenerator.from_config(OpenAIConfig(url="http://127.0.0.1:9", model="m", timeout_s=3, max_retries=0))
    assert (gen.url, gen.model, gen.timeout, gen.max_retries) == ("http://127.0.0.1:9/v1/chat/completions", "m", 3.0, 0)


# -- a real model behind the server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from assistant.generators.hf import HFGenerator
    from tests.tiny_llm import make_tiny_llm

    return HFGenerator.from_config(make_tiny_llm(tmp_path_factory.mktemp("tiny-llm")), None, HFConfig(device="cpu"))


def test_hf_generator_served_equals_direct_greedy(tiny_hf):
    params = GenParams(max_new_tokens=24)
    direct = generate(tiny_hf, MESSAGES, params)
    assert len(direct) > 10
    with served(tiny_hf) as server:
        gen = client(server)
        pieces = list(gen.stream(MESSAGES, params))
        assert "".join(pieces) == direct and len(pieces) > 3
        assert gen.last_stats["prompt_tokens"] == tiny_hf.prompt_tokens(MESSAGES)
        assert gen.last_stats["new_tokens"] == tiny_hf.last_stats["new_tokens"]
        assert gen.complete(MESSAGES, params) == direct
        stop = direct[len(direct) // 2 : len(direct) // 2 + 3]
        stopped = GenParams(max_new_tokens=24, stop=(stop,))
        assert (
            "".join(gen.stream(MESSAGES, stopped))
            == generate(tiny_hf, MESSAGES, stopped)
            == direct[: direct.index(stop)]
        )


# -- a real `tether serve` (console script, subprocess) with the openai package as the client --------

TETHER = Path(sys.executable).parent / "tether"
ROOT = Path(__file__).resolve().parent.parent
LEAVE = "# Annual leave\n\nEvery employee has 25 days of paid annual leave per year. Leave requests are approved by the line manager.\n"
TRAVEL = "# Business travel\n\nBusiness trips are approved by the department head. Economy class is booked for flights under six hours.\n"


def _env(home: Path) -> dict:
    return {**os.environ, "TETHER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tether_serve(tmp_path_factory):
    """``tether serve`` on a free loopback port: the tiny random Llama as ``tether``, and
    ``tether-rag`` (extractive answers) over two ingested documents; API key ``k``."""
    pytest.importorskip("transformers")
    from tests.tiny_llm import make_tiny_llm

    base = tmp_path_factory.mktemp("serve")
    model = make_tiny_llm(base / "tiny-llm")
    docs, home = base / "docs", base / "home"
    docs.mkdir()
    (docs / "leave.md").write_text(LEAVE)
    (docs / "travel.md").write_text(TRAVEL)
    home.mkdir()
    (home / "tether.yaml").write_text("assistant:\n  generator: extractive\n")
    done = subprocess.run(
        [str(TETHER), "ingest", str(docs)], env=_env(home), capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    port = closed_port()
    log_file = (base / "serve.log").open("w")
    args = [str(TETHER), "serve", "--port", str(port), "--model", str(model), "--api-key", "k", "--max-queue", "4"]
    proc = subprocess.Popen(args, env=_env(home), stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (base / "serve.log").read_text()
            try:
                if http(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tether serve did not start"
            time.sleep(0.5)
        yield {"url": url, "model": model, "home": home, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log_file.close()


def test_real_server_with_the_openai_client(tether_serve):
    from openai import APIStatusError, OpenAI

    oc = OpenAI(base_url=tether_serve["url"] + "/v1", api_key="k", max_retries=0, timeout=60)
    assert [m.id for m in oc.models.list()] == ["tether", "tether-rag"]
    question = [{"role": "user", "content": "How many days of annual leave does an employee have?"}]

    plain = oc.chat.completions.create(model="tether", messages=question, max_tokens=8)
    assert plain.choices[0].message.content and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens <= 8
    pieces = [
        c.choices[0].delta.content or ""
        for c in oc.chat.completions.create(model="tether", messages=question, max_tokens=8, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == plain.choices[0].message.content  # greedy: the same reply, streamed

    rag = oc.chat.completions.create(model="tether-rag", messages=question)
    content = rag.choices[0].message.content
    assert "25 days" in content and "[1]" in content and "\n\nSources:\n" in content and "leave.md" in content
    citations = rag.to_dict()["citations"]
    assert citations and {c["source"] for c in citations} == {"leave.md"}
    assert all(f"[{c['n']}]" in content for c in citations)

    chunks = list(oc.chat.completions.create(model="tether-rag", messages=question, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert strip_reply(streamed) == strip_reply(content) and "Sources:" in streamed
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].to_dict()["citations"] == citations

    with pytest.raises(APIStatusError) as err:
        oc.chat.completions.create(model="tether", messages=question, max_tokens=100_000)
    assert err.value.status_code == 400 and "ceiling (512" in err.value.message
    with pytest.raises(APIStatusError) as err:
        OpenAI(base_url=tether_serve["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert err.value.status_code == 401


def test_real_server_hostile_requests(tether_serve):
    url = tether_serve["url"]
    key = {"Authorization": "Bearer k"}
    status, health, _ = http(url + "/health")  # no key needed, and no path in it
    text = json.dumps(health)
    assert status == 200 and [m["id"] for m in health["models"]] == ["tether", "tether-rag"]
    assert str(tether_serve["model"]) not in text and str(tether_serve["home"]) not in text and "/" not in text
    assert http(url + "/v1/models")[0] == 401
    status, models, _ = http(url + "/v1/models", headers=key)
    assert status == 200 and "/" not in json.dumps(models)

    nan = b'{"model": "tether", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    status, reply, _ = http(url + "/v1/chat/completions", nan, headers=key)
    assert status == 400 and "NaN" in reply["error"]["message"]
    nested = b'{"model": "tether", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, reply, _ = http(url + "/v1/chat/completions", nested, headers=key)
    assert status == 400 and "nests deeper" in reply["error"]["message"]
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
    status, body = raw_http(url + "/v1", head + b"Content-Length: twelve\r\n\r\n{}")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"

    results: list = []

    def one(i):
        try:
            body = chat_body([Message("user", f"question {i}")], max_tokens=4)
            results.append(http(url + "/v1/chat/completions", body, headers=key)[0])
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 50 and set(results) <= {200, 503} and 200 in results, results
    assert tether_serve["proc"].poll() is None  # still serving


def test_the_cli_refuses_a_non_loopback_bind_without_a_key(tmp_path):
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(TETHER), "serve", "--host", "0.0.0.0", "--port", str(closed_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in done.stderr and "--insecure" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - t0 < 60  # refused before any model loads
