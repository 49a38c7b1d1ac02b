"""``assistant.serve`` (an OpenAI-compatible server around any Generator) and
``OpenAIGenerator`` (its client), talking to each other for real on 127.0.0.1.

Generators: ``EchoGenerator`` below (a real generator with no model: it streams the last user
message back word by word), and ``HFGenerator`` on the tiny random Llama of ``tests/tiny_llm.py``.
Failure modes (5xx, cut streams, silence) come from a scripted stub server; the retries and
timeouts are the ``openai`` package's own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from assistant.generators.base import GeneratorIdentity, GenParams, Message, generate
from assistant.generators.openai_compat import OpenAIGenerator, api_base_url, chat_completions_url
from assistant.serve import make_server
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
    with running(make_server(generator, "127.0.0.1", 0, **kwargs)) as server:
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
            status, raw, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, raw, hdrs = err.code, err.read(), dict(err.headers)
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
    assert status == 200 and headers["Content-Type"] == "application/json"
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
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
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
        assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"
        assert health["generator"]["backend"] == "echo"
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
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, r"temperature \(-1.0\) must be >= 0"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature .* must be a number"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, r"max_tokens \(0\) must be >= 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, "max_tokens .* must be an integer"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, r"top_p \(0.0\) must be in \(0, 1\]"),
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
        # the next request gets the lock once the server notices
        assert "".join(gen.stream(MESSAGES, GenParams())) == EchoGenerator.reply(MESSAGES)
    assert echo.pieces_sent[0] < 300 and echo.max_active == 1


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
