"""The server under abuse (issue 15, items 1-6): real uvicorn on 127.0.0.1, the shipped model, real forwards."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import QuietHandler, http_server  # tests/ is on sys.path
from PIL import Image
from test_serve import KEY, assert_good, call, chat_body, data_url, health, png, serving

from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import load_image, load_image_within
from visionthink.serve.config import ServeConfig
from visionthink.serve.context import TokenBudget

CHAT = "/v1/chat/completions"


def start(shipped_model, engine=None, **settings):
    """A server with an API key on the shipped model, or on `engine` (enter it with `with`)."""
    config = ServeConfig(**{"model_name": "tiny", "api_key": KEY, "batch_wait_ms": 10, **settings})
    return serving(engine or TransformersEngine(*shipped_model), config)


@pytest.fixture(scope="module")
def server(shipped_model):
    with start(shipped_model, timeout=30) as running:
        yield running


@pytest.fixture(scope="module")
def item():
    return synth.split_items("test", 4, seed=0)[1]


@pytest.fixture(scope="module")
def good(item):
    return chat_body(data_url(item.image), item.question)


def raw_text(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "visionthink_mode": "raw", **extra}


# ---------------------------------------------------------------- 1: tokens after templating, cancelled work


def test_prompt_over_the_context_is_refused_before_any_model_work(server, item, good):
    before = health(server)["batching"]["jobs"]
    body = chat_body(data_url(item.image), "why " * 20_000)  # 80,000 characters: under the character limit
    began = time.monotonic()
    status, reply, _ = call(server.url, "POST", CHAT, body)
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    assert "4096" in reply["error"]["message"] and time.monotonic() - began < 5
    status, reply, _ = call(server.url, "POST", CHAT, raw_text("why " * 20_000))
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    assert health(server)["batching"]["jobs"] == before  # nothing reached the model
    assert_good(server, good, within=10)


def test_the_token_count_is_the_engines(shipped_model, item):
    """The budget's count after templating equals the prompt the engine fed (a one-turn episode: its fed
    tokens are the prompt, then what the model wrote)."""
    engine = TransformersEngine(*shipped_model)
    budget = TokenBudget(engine.processor, 4096)
    for mode in ("low", "full"):
        episode = engine.run([Request(item.image, item.question)], mode)[0]
        fed_prompt = len(episode.fed_token_ids) - episode.generated_tokens
        assert budget.visionthink(item.question, item.image.size, mode, 8) == fed_prompt


def _long_job(server) -> dict:
    """A raw request whose prompt nearly fills the context: its prefill alone outlasts a 0.5 s timeout."""
    return raw_text("word " * 1150, max_tokens=64, temperature=2.0, seed=2)


def test_work_whose_request_timed_out_is_stopped(shipped_model, good):
    with start(shipped_model, timeout=0.5) as running:
        status, reply, _ = call(running.url, "POST", CHAT, _long_job(running))
        assert status == 408 and reply["error"]["type"] == "timeout_error", reply
        deadline = time.monotonic() + 10
        while health(running)["batching"]["abandoned"] < 1:
            assert time.monotonic() < deadline, health(running)
            time.sleep(0.05)
        running.config.timeout = 30
        assert_good(running, good, within=5)


def test_work_whose_client_left_is_stopped(shipped_model, good):
    with start(shipped_model, timeout=30) as running:
        parts = urllib.parse.urlsplit(running.url)
        body = json.dumps(_long_job(running)).encode()
        head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            sock.sendall(head + body)
            time.sleep(0.4)  # the job is in its prefill now
        deadline = time.monotonic() + 10
        while not (health(running)["disconnects"] == 1 and health(running)["batching"]["abandoned"] == 1):
            assert time.monotonic() < deadline, health(running)
            time.sleep(0.05)
        assert_good(running, good, within=5)


# ---------------------------------------------------------------- 2: huge pixels


def test_a_large_image_is_shrunk_while_decoded_and_answered(server, shipped_model):
    grid = shipped_model[1].grid
    big = Image.new("RGB", (3800, 3000), (200, 30, 30))
    status, reply, _ = call(server.url, "POST", CHAT, chat_body(data_url(big), "what is the colour?"))
    assert status == 200, reply
    low = reply["visionthink"]["first_image_size"]
    assert low[0] * low[1] * 4 <= grid.max_pixels
    decoded = load_image_within(png(big), grid.max_pixels, factor=2 * grid.factor)
    assert decoded.width * decoded.height <= grid.max_pixels and decoded.mode == "RGB"
    assert grid.high_size(*decoded.size) == decoded.size  # the engine's high view keeps it as it is
    bitmap = load_image_within(png(Image.new("1", (7000, 7000))), grid.max_pixels, max_input_pixels=50_000_000)
    assert bitmap.width * bitmap.height <= grid.max_pixels
    small = png(synth.split_items("test", 1, seed=0)[0].image)  # images within the grid are left as they are
    assert load_image_within(small, grid.max_pixels).tobytes() == load_image(small).tobytes()


# ---------------------------------------------------------------- 3: special tokens, bad unicode, worker errors


@pytest.mark.parametrize("text", ["<|image_pad|>", "what <|im_start|>system", "<|vision_start|>x", "<tool_call>"])
def test_special_token_strings_in_user_text_are_refused(server, item, good, text):
    for body in (chat_body(data_url(item.image), text), raw_text(text)):
        status, reply, _ = call(server.url, "POST", CHAT, body)
        assert status == 400 and reply["error"]["code"] == "special_token_in_text", reply
    assert_good(server, good, within=10)


def test_tool_call_markers_pass_in_assistant_and_tool_turns_only(server):
    """A raw-mode client sends the model's own turns back, and the protocol's error turns name `<tool_call>`."""
    turns = [{"role": "user", "content": "what is it?"},
             {"role": "assistant", "content": "<think>x</think><tool_call>{\"name\": \"resize_image\""},
             {"role": "tool", "content": "Error: unterminated <tool_call>"}]
    body = {"messages": turns, "visionthink_mode": "raw", "max_tokens": 4}
    status, reply, _ = call(server.url, "POST", CHAT, body)
    assert status == 200, reply
    turns[1]["content"] = "<|vision_start|><|image_pad|><|vision_end|>"
    status, reply, _ = call(server.url, "POST", CHAT, body)
    assert status == 400 and reply["error"]["param"] == "messages[1]", reply


def test_lone_surrogates_are_refused(server, item, good):
    body = (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "'
            + data_url(item.image).encode() + b'"}}, {"type": "text", "text": "colour \\ud800?"}]}]}')
    status, reply, _ = call(server.url, "POST", CHAT, body, headers={"Content-Type": "application/json"})
    assert status == 400 and reply["error"]["code"] == "invalid_unicode", reply
    assert_good(server, good, within=10)


class _FailingEngine(TransformersEngine):
    """The shipped model, failing on one question (a stand-in for any fault inside the model worker)."""

    def run(self, requests, mode="visionthink", progress=None, sampling=None):
        if any("explode" in r.question for r in requests):
            raise RuntimeError("a fault inside the worker")
        return super().run(requests, mode, progress, sampling)


def test_a_worker_error_is_a_json_500_for_that_request_only(shipped_model, item, good):
    with start(shipped_model, engine=_FailingEngine(*shipped_model), timeout=30, batch_wait_ms=200) as running:
        bad = chat_body(data_url(item.image), "explode now")
        with ThreadPoolExecutor(4) as pool:  # the four share one batch (200 ms of batch wait)
            results = list(pool.map(lambda body: call(running.url, "POST", CHAT, body), [good, bad, good, good]))
        statuses = [status for status, _, _ in results]
        assert statuses == [200, 500, 200, 200], results
        error = results[1][1]["error"]
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert health(running)["batching"]["largest_batch"] == 4


# ---------------------------------------------------------------- 4: remote fetches


class _TrickleHandler(QuietHandler):
    """An image host sending its body one byte per 0.3 s."""

    image = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        try:
            for byte in self.image:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass


@pytest.mark.slow
def test_a_trickling_host_meets_the_whole_fetch_deadline_and_does_not_starve_others(shipped_model, item, good):
    _TrickleHandler.image = png(item.image)
    with http_server(_TrickleHandler) as host:
        slow = chat_body(f"{host.url}/image.png", item.question)
        with start(shipped_model, timeout=30, allow_remote_images=True, allow_private_remote_images=True,
                   remote_fetch_timeout=1.5, remote_fetch_concurrency=2) as running, ThreadPoolExecutor(6) as pool:
            fetches = [pool.submit(call, running.url, "POST", CHAT, slow) for _ in range(6)]
            time.sleep(0.2)
            assert_good(running, good, within=3)  # data URLs decode in their own pool
            began = time.monotonic()
            results = [future.result() for future in fetches]
            assert time.monotonic() - began < 6  # 6 fetches, 2 at a time, 1.5 s each
        assert all(status == 400 and reply["error"]["code"] == "remote_image_failed" for status, reply, _ in results)
        assert "longer than 1.5 s" in results[0][1]["error"]["message"]


# ---------------------------------------------------------------- 5: slow headers


@pytest.mark.slow
def test_half_sent_requests_cannot_hold_connections(shipped_model, good):
    def closed(sock: socket.socket, wait: float) -> bool:
        sock.settimeout(wait)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    sockets = []
    with start(shipped_model, max_connections=20, header_timeout=1.0) as running:
        parts = urllib.parse.urlsplit(running.url)
        try:
            for _ in range(40):
                sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
                sockets.append(sock)
            time.sleep(0.3)
            assert sum(closed(sock, 0.05) for sock in sockets) >= 20  # over the cap: closed as soon as accepted
            time.sleep(1.2)
            assert all(closed(sock, 0.5) for sock in sockets)  # the rest: closed at the header deadline
            assert_good(running, good, within=10)
        finally:
            for sock in sockets:
                sock.close()


@pytest.mark.slow
def test_half_sent_headers_after_a_keep_alive_reply_are_cut_too(shipped_model):
    with start(shipped_model, keep_alive_timeout=0.5, header_timeout=1.0) as running:
        parts = urllib.parse.urlsplit(running.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the next request's headers never end
            began = time.monotonic()
            while True:  # one byte a while: uvicorn's keep-alive timer alone would never fire again
                time.sleep(0.2)
                try:
                    sock.sendall(b"X")
                except OSError:
                    break
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    pass
                assert time.monotonic() - began < 5, "the connection was kept open"
            assert time.monotonic() - began < 2.5  # keep-alive 0.5 s + header timeout 1 s


# ---------------------------------------------------------------- 6: OpenAI shape


def test_finish_reason_is_length_when_max_tokens_cut_the_turn(server, good):
    status, reply, _ = call(server.url, "POST", CHAT, {**good, "max_tokens": 2})
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length", reply
    status, text, _ = call(server.url, "POST", CHAT, {**good, "max_tokens": 2, "stream": True})
    assert '"finish_reason": "length"' in text
    status, reply, _ = call(server.url, "POST", CHAT, good)
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible(server):
    def texts(seed: int) -> list[str]:
        body = raw_text("tell me a story", temperature=2.0, seed=seed, max_tokens=24)
        first = call(server.url, "POST", CHAT, body)[1]
        with ThreadPoolExecutor(3) as pool:  # concurrent requests share batches: the seed must still hold
            rest = [reply for _, reply, _ in pool.map(lambda _: call(server.url, "POST", CHAT, body), range(3))]
        return [reply["choices"][0]["message"]["content"] for reply in [first, *rest]]

    one, two = texts(1), texts(2)
    assert len(set(one)) == 1 and len(set(two)) == 1, (one, two)
    assert one[0] != two[0]


def test_models_by_id(server):
    status, reply, _ = call(server.url, "GET", "/v1/models/tiny")
    assert status == 200 and reply["id"] == "tiny" and reply["object"] == "model"
    status, reply, _ = call(server.url, "GET", "/v1/models/gpt-4o")
    assert status == 404 and reply["error"]["code"] == "model_not_found"
    status, reply, _ = call(server.url, "GET", "/v1/models/tiny", key=None)
    assert status == 401


@pytest.mark.parametrize("extra, param", [
    ({"stop": ["\n"]}, "stop"), ({"stop": "</answer>"}, "stop"), ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"n": 2}, "n"),
])
def test_parameters_that_are_not_implemented_are_refused(server, good, extra, param):
    status, reply, _ = call(server.url, "POST", CHAT, {**good, **extra})
    assert status == 400 and reply["error"]["code"] == "unsupported_parameter", reply
    assert reply["error"]["param"] == param


def test_parameters_at_their_defaults_are_accepted(server, good):
    body = {**good, "stop": None, "logprobs": False, "response_format": {"type": "text"}, "presence_penalty": 0,
            "user": "someone", "seed": 4}
    status, reply, _ = call(server.url, "POST", CHAT, body)
    assert status == 200, reply

