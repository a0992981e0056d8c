"""The OpenAI-compatible server, run for real with uvicorn on 127.0.0.1 (a thread; one test a subprocess)."""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import QuietHandler, full_tokens, http_server  # tests/ is on sys.path
from PIL import Image

from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.serve.app import create_app
from visionthink.serve.background import BackgroundServer
from visionthink.serve.config import ServeConfig

KEY = "test-key-123"
MAX_BODY = 4 * 1024 * 1024


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def chat_body(url: str, question: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}], **extra}


def serving(engine, config: ServeConfig | None = None, **app_options) -> BackgroundServer:
    """`engine` behind the app on a loopback port, started by `with` (or `.start()`): `.app` is the app and `.config`
    the config it runs with (a test may change its timeout)."""
    config = config or ServeConfig()
    app = create_app(engine, config, **app_options)
    server = BackgroundServer(app)
    server.app, server.config = app, config
    return server


def call(base: str, method: str, path: str, body=None, key: str | None = KEY, headers: dict | None = None):
    """(status, parsed JSON or text, headers) of one request over a fresh loopback connection."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        raw = response.read().decode()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw
        return response.status, payload, dict(response.getheaders())
    finally:
        connection.close()


def raw_exchange(base: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send raw bytes (headers, then part of a body) and read the reply without sending the rest."""
    parts = urllib.parse.urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.fixture(scope="module")
def items():
    return synth.split_items("test", 16, seed=0)


@pytest.fixture(scope="module")
def server(shipped_model):
    config = ServeConfig(model_name="tiny", api_key=KEY, max_body_bytes=MAX_BODY, max_images=8, max_batch=16,
                         batch_wait_ms=10, timeout=30)
    with serving(TransformersEngine(*shipped_model), config) as running:
        yield running


@pytest.fixture(scope="module")
def good(items):
    item = items[1]
    return chat_body(data_url(item.image), item.question)


def assert_good(server, good, key: str | None = KEY, within: float = 60.0) -> dict:
    """The server still answers a good request, with content, within `within` seconds."""
    began = time.monotonic()
    status, reply, _ = call(server.url, "POST", "/v1/chat/completions", good, key=key)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] and time.monotonic() - began < within
    return reply


def health(server) -> dict:
    return call(server.url, "GET", "/health", key=None)[1]


def test_reply_is_openai_shaped_with_visionthink_fields(server, items, shipped_model):
    item = items[1]
    status, reply, _ = call(server.url, "POST", "/v1/chat/completions",
                            chat_body(data_url(item.image), item.question, visionthink_return_image=True))
    assert status == 200, reply
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny"
    choice = reply["choices"][0]
    info = reply["visionthink"]
    usage = reply["usage"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["resized"] is info["resized"]
    assert choice["message"]["content"] == info["answer"]
    full = full_tokens(item.image)
    assert usage["full_res_visual_tokens"] == full
    assert usage["visual_tokens"] == (full * 5 // 4 if info["resized"] else full // 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(info["turns"]) == (2 if info["resized"] else 1)
    low = Image.open(io.BytesIO(base64.b64decode(info["low_res_image"].split(",", 1)[1])))
    assert low.size == (item.image.width // 2, item.image.height // 2) == tuple(info["first_image_size"])
    # The same episode as the engine run directly.
    episode = TransformersEngine(*shipped_model).run([Request(item.image, item.question)])[0]
    assert info["turns"] == episode.summary()["turns"]
    # Low mode never resizes and sends no image back unless asked.
    status, reply, _ = call(server.url, "POST", "/v1/chat/completions",
                            chat_body(data_url(item.image), item.question, visionthink_mode="low"))
    assert status == 200 and reply["visionthink"]["resized"] is False
    assert reply["usage"]["visual_tokens"] == full_tokens(item.image) // 4
    assert "low_res_image" not in reply["visionthink"]


@functools.cache
def _bomb() -> str:
    return data_url(Image.new("1", (10_000, 10_000)))  # 100 megapixels in a small PNG


_TEXT_URL = "data:text/plain;base64," + base64.b64encode(b"hello, not an image").decode()
_FAKE_PNG_URL = "data:image/png;base64," + base64.b64encode(b"x" * 64).decode()
_FUNCTION = [{"type": "function", "function": {"name": "f"}}]

BAD_REQUESTS = {
    # name: (body from a good image URL, key sent, status, error code)
    "malformed JSON": (lambda url: b'{"messages": [', KEY, 400, "invalid_json"),
    "empty body": (lambda url: b"", KEY, 400, "invalid_json"),
    "JSON array": (lambda url: b"[1, 2]", KEY, 400, "invalid_json"),
    "non-image data URL": (lambda url: chat_body(_TEXT_URL, "q?"), KEY, 400, "invalid_image"),
    "image/png holding text": (lambda url: chat_body(_FAKE_PNG_URL, "q?"), KEY, 400, "invalid_image"),
    "bad base64": (lambda url: chat_body("data:image/png;base64,@@@@", "q?"), KEY, 400, "invalid_image"),
    "100-megapixel PNG": (lambda url: chat_body(_bomb(), "q?"), KEY, 400, "invalid_image"),
    "20 images": (lambda url: {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}] * 20 + [{"type": "text", "text": "q?"}]}]},
        KEY, 400, "too_many_images"),
    "remote URL without the flag": (lambda url: chat_body("http://127.0.0.1:9/cat.png", "q?"), KEY, 400,
                                    "remote_images_disabled"),
    "file URL": (lambda url: chat_body("file:///etc/passwd", "q?"), KEY, 400, "invalid_image_url"),
    "missing key": (lambda url: chat_body(url, "q?"), None, 401, "missing_api_key"),
    "wrong key": (lambda url: chat_body(url, "q?"), "not-the-key", 401, "invalid_api_key"),
    "no image": (lambda url: {"messages": [{"role": "user", "content": "What colour?"}]}, KEY, 400,
                 "missing_image"),
    "no messages": (lambda url: {"model": "tiny"}, KEY, 400, "invalid_message"),
    "unknown part type": (lambda url: {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, KEY,
                          400, "unsupported_content"),
    "unknown mode": (lambda url: chat_body(url, "q?", visionthink_mode="oracle"), KEY, 400, "invalid_parameter"),
    "tools outside raw mode": (lambda url: chat_body(url, "q?", visionthink_mode="low", tools=_FUNCTION), KEY, 400,
                               "invalid_parameter"),
    "bad max_tokens": (lambda url: chat_body(url, "q?", max_tokens=-3), KEY, 400, "invalid_parameter"),
    "other model": (lambda url: chat_body(url, "q?", model="gpt-4o"), KEY, 404, "model_not_found"),
    "too much text": (lambda url: chat_body(url, "why? " * 30_000), KEY, 400, "text_too_long"),
    "temperature true": (lambda url: chat_body(url, "q?", temperature=True), KEY, 400, "invalid_parameter"),
    "stream as a string": (lambda url: chat_body(url, "q?", stream="yes"), KEY, 400, "invalid_parameter"),
    "image_url.url a number": (lambda url: {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": 3}}, {"type": "text", "text": "q?"}]}]}, KEY, 400,
        "invalid_image_url"),
    "unknown role": (lambda url: {"messages": [{"role": "bot", "content": "q?"}]}, KEY, 400, "invalid_message"),
    "tool without function": (lambda url: chat_body(url, "q?", tools=[{"type": "function"}]), KEY, 400,
                              "invalid_parameter"),
    "extreme aspect ratio": (lambda url: chat_body(data_url(Image.new("RGB", (3000, 10))), "q?"), KEY, 400,
                             "invalid_image"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_then_a_good_one_succeeds(server, items, good, case):
    build, key, status, code = BAD_REQUESTS[case]
    got, reply, headers = call(server.url, "POST", "/v1/chat/completions", build(data_url(items[0].image)), key=key)
    assert got == status, reply
    assert set(reply["error"]) >= {"message", "type", "code"}
    assert reply["error"]["code"] == code and reply["error"]["message"]
    if status == 401:
        assert reply["error"]["type"] == "authentication_error" and headers["www-authenticate"] == "Bearer"
    assert_good(server, good)


def test_oversized_bodies_get_413(server, good):
    port = urllib.parse.urlsplit(server.url).port
    declared = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n").encode()
    status, reply = raw_exchange(server.url, declared)  # refused on the header, before any body is read
    assert status == 413 and reply["error"]["code"] == "body_too_large"
    chunked = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"x" * (1024 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(MAX_BODY // len(piece) + 1))
    status, reply = raw_exchange(server.url, chunked, body)  # no length given: counted while streaming in
    assert status == 413 and reply["error"]["code"] == "body_too_large"
    assert_good(server, good)


def test_timeout_is_a_4xx_and_the_server_goes_on(server, good):
    server.config.timeout = 1e-4
    try:
        status, reply, _ = call(server.url, "POST", "/v1/chat/completions", good)
    finally:
        server.config.timeout = 30
    assert status == 408 and reply["error"]["type"] == "timeout_error"
    assert_good(server, good)


def _sse(base: str, body: dict) -> tuple[list[dict], str]:
    status, text, headers = call(base, "POST", "/v1/chat/completions", {**body, "stream": True})
    assert status == 200, text
    assert headers["content-type"].startswith("text/event-stream")
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]], text


def test_streaming_returns_the_same_text_as_non_streaming(server, items):
    for item in items[:4]:
        body = chat_body(data_url(item.image), item.question)
        _, plain, _ = call(server.url, "POST", "/v1/chat/completions", body)
        chunks, _ = _sse(server.url, body)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks)
        message = plain["choices"][0]["message"]
        assert content == message["content"]
        assert reasoning == message["reasoning_content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
        assert chunks[-1]["usage"] == plain["usage"]
        assert chunks[-1]["visionthink"]["resized"] == plain["visionthink"]["resized"]


def test_models_health_page_and_unknown_routes(server):
    status, reply, _ = call(server.url, "GET", "/v1/models")
    assert status == 200 and reply["object"] == "list" and reply["data"][0]["id"] == "tiny"
    status, reply, _ = call(server.url, "GET", "/v1/models", key=None)
    assert status == 401 and reply["error"]["code"] == "missing_api_key"
    status, reply, _ = call(server.url, "GET", "/health", key=None)
    assert status == 200 and reply["status"] == "ok" and reply["model"] == "tiny"
    status, page, headers = call(server.url, "GET", "/", key=None)
    assert status == 200 and headers["content-type"].startswith("text/html") and "<form" in page
    status, reply, _ = call(server.url, "GET", "/v1/nothing")
    assert status == 404 and reply["error"]["type"] == "not_found_error"
    status, reply, _ = call(server.url, "GET", "/v1/chat/completions")
    assert status == 405 and reply["error"]["message"]


def test_concurrent_requests_are_all_answered_in_batches(server, items, shipped_model):
    bodies = [chat_body(data_url(item.image), item.question) for item in items]
    expected = [e.answer for e in TransformersEngine(*shipped_model).run([Request(i.image, i.question) for i in items])]
    before = call(server.url, "GET", "/health")[1]["batching"]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda body: call(server.url, "POST", "/v1/chat/completions", body), bodies))
    assert [status for status, _, _ in results] == [200] * len(bodies)
    assert [reply["visionthink"]["answer"] for _, reply, _ in results] == expected
    after = call(server.url, "GET", "/health")[1]["batching"]
    assert after["jobs"] - before["jobs"] >= len(bodies)
    assert after["batches"] - before["batches"] < len(bodies)  # some requests shared a forward pass
    assert after["largest_batch"] > 1


class _ImageHandler(QuietHandler):
    image = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
            return
        self.reply(200, self.image, "image/png")


def test_remote_images_only_with_the_flag_and_never_private_by_default(shipped_model, items):
    item = items[2]
    _ImageHandler.image = png(item.image)
    with http_server(_ImageHandler) as images:
        url, engine = images.url, TransformersEngine(*shipped_model)
        # With the flag, public hosts only: a loopback URL is an SSRF attempt.
        with serving(engine, ServeConfig(allow_remote_images=True)) as public_only:
            status, reply, _ = call(public_only.url, "POST", "/v1/chat/completions",
                                    chat_body(f"{url}/image.png", item.question))
            assert status == 400 and reply["error"]["code"] == "remote_image_refused"
        with serving(engine, ServeConfig(allow_remote_images=True, allow_private_remote_images=True)) as fetching:
            status, reply, _ = call(fetching.url, "POST", "/v1/chat/completions",
                                    chat_body(f"{url}/image.png", item.question))
            assert status == 200 and reply["visionthink"]["answer"], reply
            status, reply, _ = call(fetching.url, "POST", "/v1/chat/completions",
                                    chat_body(f"{url}/redirect", item.question))
            assert status == 400 and reply["error"]["code"] == "remote_image_failed"


@pytest.mark.slow
def test_cli_serve_subcommand(shipped_model_dir, items, free_port):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "visionthink", "serve", "--model", str(shipped_model_dir), "--port", str(port),
               "--api-key", "cli-key", "--max-images", "2", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if call(base, "GET", "/health", key=None)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.25)
        status, reply, _ = call(base, "GET", "/v1/models", key="cli-key")
        assert status == 200 and reply["data"][0]["id"] == shipped_model_dir.name
        item = items[0]
        status, reply, _ = call(base, "POST", "/v1/chat/completions", chat_body(data_url(item.image), item.question),
                                key="cli-key")
        assert status == 200 and reply["usage"]["full_res_visual_tokens"] == full_tokens(item.image)
        three = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(
            item.image)}}] * 3 + [{"type": "text", "text": "q?"}]}]}
        status, reply, _ = call(base, "POST", "/v1/chat/completions", three, key="cli-key")
        assert status == 400 and "at most 2" in reply["error"]["message"]
    finally:
        process.terminate()
        process.wait(timeout=30)
