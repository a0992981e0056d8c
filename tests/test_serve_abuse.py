"""The server under the second round of abuse: images that are cheap to send and costly to decode, request size that
is not text, slow bodies, hostile HTTP and hosts. Real uvicorn on 127.0.0.1, the shipped model."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.parse

import hostile  # tests/ is on sys.path
import pytest
from PIL import Image
from test_serve import KEY, assert_good, call, chat_body, data_url, health, serving

from visionthink.data import synth
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import ImageError
from visionthink.images import MAX_JPEG_SCANS, load_image
from visionthink.serve.config import ServeConfig
from visionthink.serve.fetch import is_public

CHAT = "/v1/chat/completions"


def start(shipped_model, **settings):
    """A keyless server on the shipped model (enter it with `with`)."""
    return serving(TransformersEngine(*shipped_model), ServeConfig(**{"model_name": "tiny", "batch_wait_ms": 10,
                                                                     "timeout": 30, **settings}))


@pytest.fixture(scope="module")
def server(shipped_model):
    """A server without an API key (the Host and Origin checks apply), slow bodies cut after 1 s."""
    with start(shipped_model, body_timeout=1.0, allow_remote_images=True) as running:
        yield running


@pytest.fixture(scope="module")
def good():
    item = synth.split_items("test", 2, seed=0)[1]
    return chat_body(data_url(item.image), item.question)


def post(server, body, **options):
    return call(server.url, "POST", CHAT, body, key=None, **options)


def encoded_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def address(server) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(server.url)
    return parts.hostname, parts.port


def read_reply(sock: socket.socket, wait: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or `wait` runs out)."""
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def json_of(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


# ---------------------------------------------------------------- images: allow-list and structure caps


HOSTILE_IMAGES = {
    "repeated scan": (lambda: hostile.repeated_scan_jpeg(2000, 5000), "scans"),
    "fill bytes": (lambda: hostile.fill_padded_jpeg(2_000_000), "fill"),
    "APP15 segments": (lambda: hostile.app_segments_jpeg(500_000), "segments"),
    "quantization tables": (lambda: hostile.table_segments_jpeg(200), "quantization tables"),
    "private chunks": (lambda: hostile.private_chunks_png(300_000), "chunks"),
    "comment blocks": (lambda: hostile.comment_blocks_gif(200_000), "blocks"),
    "ICO with a big PNG": (lambda: hostile.ico_holding_png(4000), "not a recognised image format"),
    "ICNS with a big PNG": (lambda: hostile.icns_holding_png(4000), "not a recognised image format"),
    "EPS comments": (lambda: hostile.eps_comments(200_000), "not a recognised image format"),
}


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
def test_images_that_are_costly_to_parse_are_refused_before_decoding(server, good, name):
    make, reason = HOSTILE_IMAGES[name]
    data = make()
    before = health(server)
    began = time.monotonic()
    status, reply, _ = post(server, chat_body(encoded_url(data), "what is it?"))
    assert status == 400 and reply["error"]["code"] == "invalid_image", reply
    assert reason in reply["error"]["message"]
    assert time.monotonic() - began < 5
    assert health(server)["batching"]["jobs"] == before["batching"]["jobs"]
    with pytest.raises(ImageError, match=reason):  # `ask` and `eval` load images through the same checks
        load_image(data)
    assert_good(server, good, None, 5)


def test_the_allowed_formats_are_answered(server):
    picture = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    for fmt, media, options in [("JPEG", "image/jpeg", {"progressive": True}), ("WEBP", "image/webp", {}),
                                ("GIF", "image/gif", {}), ("PNG", "image/png", {})]:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        status, reply, _ = post(server, chat_body(encoded_url(buffer.getvalue(), media), "what colour?"))
        assert status == 200, (fmt, reply)


def test_a_progressive_jpeg_within_the_scan_cap_decodes():
    data = hostile.repeated_scan_jpeg(200, MAX_JPEG_SCANS - 12)  # a progressive JPEG has ten scans of its own
    assert load_image(data).size == (200, 200)
    with pytest.raises(ImageError, match="scans"):
        load_image(hostile.repeated_scan_jpeg(200, MAX_JPEG_SCANS))


def _with_chunks(image: Image.Image, chunks: int) -> bytes:
    """`image` as a PNG with `chunks` empty private chunks: parsed in a worker process, pixels counted there."""
    data = hostile.png(image)
    return data[:33] + hostile.private_chunks_png(chunks)[33:33 + 12 * chunks] + data[33:]


@pytest.mark.parametrize("chunks", [0, 1500])
def test_pixel_limits_per_image_and_per_request_whatever_the_structure(server, good, chunks):
    """25 MP in a small PNG is over the image limit; 3 x 12.25 MP, each under it, is over the request's. With 1500
    chunks the PNG is parsed in a worker process, and its pixels are counted there."""
    big = encoded_url(_with_chunks(Image.new("1", (5000, 5000), 1), chunks))
    status, reply, _ = post(server, chat_body(big, "q?"))
    assert status == 400 and reply["error"]["code"] == "invalid_image", reply
    assert "16.0 megapixels" in reply["error"]["message"]
    url = encoded_url(_with_chunks(Image.new("1", (3500, 3500), 1), chunks))
    part = {"type": "image_url", "image_url": {"url": url}}
    three = {"messages": [{"role": "user", "content": [part] * 3 + [{"type": "text", "text": "q?"}]}],
             "visionthink_mode": "raw"}
    status, reply, _ = post(server, three)
    assert status == 400 and reply["error"]["code"] == "too_many_pixels", reply
    status, reply, _ = post(server, chat_body(encoded_url(_with_chunks(Image.new("RGB", (300, 200)), chunks)), "q?"))
    assert status == 200, reply
    assert_good(server, good, None, 5)


def _slow_jpeg() -> bytes:
    """A 16 MP progressive JPEG within the scan cap: 0.3-1 s of decoding, in a worker process."""
    return hostile.repeated_scan_jpeg(4000, MAX_JPEG_SCANS - 12)


def _decode_seconds(data: bytes) -> float:
    """How long this machine takes to decode `data` here (the server's worker does at least as much)."""
    began = time.perf_counter()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    return time.perf_counter() - began


def test_a_large_decode_past_its_deadline_is_killed(shipped_model, good):
    with start(shipped_model, decode_timeout=0.05) as running:
        status, reply, _ = post(running, chat_body(encoded_url(_slow_jpeg(), "image/jpeg"), "what?"))
        assert status == 400 and "deadline" in reply["error"]["message"], reply
        assert health(running)["decoders_killed"] == 1
        assert_good(running, good, None, 5)


def test_a_large_decode_stops_with_its_request(shipped_model, good):
    """A request over while its image decodes: 408, and the server answers the next one at once. The limit is a
    third of this machine's own decode time (a fixed 0.5 s let a fast machine finish the request: a 200)."""
    data = _slow_jpeg()
    with start(shipped_model, timeout=max(0.05, _decode_seconds(data) / 3)) as running:
        status, reply, _ = post(running, chat_body(encoded_url(data, "image/jpeg"), "what?"))
        assert status == 408, reply
        running.config.timeout = 30
        assert_good(running, good, None, 5)


def test_a_decode_whose_request_is_over_is_killed_at_once():
    """The worker is killed as soon as its request's stop event is set, not when the decode would have ended (the
    server sets that event when a request times out or its client leaves)."""
    import threading

    from visionthink.serve.decoder import DecodeWorkers

    workers = DecodeWorkers(1, deadline=30)
    try:
        data = _slow_jpeg()
        began = time.monotonic()
        workers.decode(data, 16_000_000, 28, 50_000_000)  # warm: the next decode starts at once
        whole = time.monotonic() - began
        stop = threading.Event()
        threading.Timer(0.05, stop.set).start()
        began = time.monotonic()
        with pytest.raises(ImageError, match="the request is over"):
            workers.decode(data, 16_000_000, 28, 50_000_000, stop=stop)
        assert time.monotonic() - began < whole and workers.killed == 1
    finally:
        workers.close()


def test_marker_bytes_inside_segments_and_many_image_chunks_are_not_counted():
    """The walk skips segment payloads (an EXIF thumbnail holds scans of its own) and counts chunks, not bytes."""
    data = hostile.jpeg(Image.new("RGB", (64, 64), (1, 2, 3)), progressive=True)
    payload = b"Exif\x00\x00" + b"\xff\xda\xff\xef\xff\xff" * 5000
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    assert load_image(data[:2] + segment + data[2:]).size == (64, 64)
    noise = Image.effect_noise((1200, 1200), 40).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=1)
    assert buffer.getvalue().count(b"IDAT") > 20 and load_image(buffer.getvalue()).size == (1200, 1200)


# ---------------------------------------------------------------- request structure


def _many_messages(count: int) -> dict:
    return {"messages": [{"role": "user", "content": ""}] * count + [{"role": "user", "content": "hi"}],
            "visionthink_mode": "raw", "max_tokens": 2}


def _tool_calls(count: int, arguments: str = "{}") -> dict:
    call_ = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "", "tool_calls": [call_] * count},
                         {"role": "user", "content": "go on"}], "visionthink_mode": "raw", "max_tokens": 2}


def _deep_tools(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}


@pytest.mark.parametrize("body, code", [
    (_many_messages(10_000), "too_many_messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 5000}], "visionthink_mode": "raw"},
     "too_many_content_parts"),
    (_tool_calls(5000), "too_many_tool_calls"),
    (_tool_calls(2, "x" * 150_000), "text_too_long"),
    ({**_many_messages(1), "tools": [{"type": "function", "function": {"name": "f"}}] * 500}, "too_many_tools"),
    (_deep_tools(300), "too_deep"),
    ({"messages": [{"role": "user", "content": "hi"}], "junk": [{}] * 300_000}, "request_too_complex"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"1" * 5000 + b"}", "invalid_json"),
])
def test_request_size_that_is_not_text_is_refused_before_templating(server, good, body, code):
    before = health(server)
    began = time.monotonic()
    status, reply, _ = post(server, body, headers={"Content-Type": "application/json"})
    assert status == 400 and reply["error"]["code"] == code, reply
    assert time.monotonic() - began < 5
    after = health(server)
    assert after["batching"]["jobs"] == before["batching"]["jobs"] and after["errors"] == before["errors"]
    assert_good(server, good, None, 5)


def test_structure_within_the_limits_is_answered(server):
    for body in (_many_messages(100), _tool_calls(20), _deep_tools(8)):
        status, reply, _ = post(server, body)
        assert status == 200, reply


def test_a_malformed_remote_url_is_a_400(server):
    for url in ("http://[::1/x.png", "http://host:99999/x.png", "http://[fe80::1%25eth0/x"):
        status, reply, _ = post(server, chat_body(url, "q?"))
        assert status == 400 and reply["error"]["code"] in ("invalid_image_url", "remote_image_refused"), reply


# ---------------------------------------------------------------- addresses


def _ipv6_forms(ipv4: str) -> list[str]:
    """Every IPv6 spelling that carries `ipv4`: mapped, compatible, translated, NAT64 (well-known and local-use),
    6to4 and Teredo (the client's address inverted)."""
    value = int.from_bytes(socket.inet_aton(ipv4), "big")
    high, low = f"{value >> 16:x}", f"{value & 0xFFFF:x}"
    inverted = value ^ 0xFFFFFFFF
    return [f"::ffff:{ipv4}", f"::{ipv4}", f"::{high}:{low}", f"::ffff:0:{ipv4}", f"64:ff9b::{ipv4}",
            f"64:ff9b:1::{high}:{low}", f"64:ff9b:1:{high}:{low}::", f"2002:{high}:{low}::1",
            f"2001:0:{high}:{low}::1", f"2001:0:4136:e378:8000:63bf:{inverted >> 16:x}:{inverted & 0xFFFF:x}"]


PRIVATE_V4 = ["127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.1.2", "169.254.169.254", "169.254.0.1"]


@pytest.mark.parametrize("address", [
    "::a9fe:a9fe", "::7f00:1", "64:ff9b:1::7f00:1", "::ffff:0:7f00:1", "fec0::1", "fc00::1", "fd12:3456::1",
    "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1", "::", "fe80::1", "10.1.2.3", "64:ff9b::7f00:1", "64:ff9b::a00:1",
    "2002:c0a8:101::", *PRIVATE_V4, *(form for ipv4 in PRIVATE_V4 for form in _ipv6_forms(ipv4))])
def test_non_public_addresses_are_refused_in_every_form(address):
    assert not is_public(address)


def test_public_addresses_pass():
    assert all(map(is_public, ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]))


@pytest.mark.parametrize("host", ["[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "[::ffff:127.0.0.1]"])
def test_remote_urls_of_nat64_and_6to4_private_forms_are_refused(server, host):
    status, reply, _ = post(server, chat_body(f"http://{host}:9/x.png", "q?"))
    assert status == 400 and reply["error"]["code"] == "remote_image_refused", reply


# ---------------------------------------------------------------- slow and broken bodies


def _open_post(server, length: int, key: str | None = None) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=10)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {address(server)[0]}\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def test_a_slow_body_is_answered_408_and_its_connection_closed(server, good):
    before = health(server)["timeouts"]
    with _open_post(server, 10_000) as sock:
        began = time.monotonic()
        sock.settimeout(0.3)
        closed = b""
        while time.monotonic() - began < 8:  # one byte every 0.3 s: the 1 s body deadline still cuts it
            try:
                sock.sendall(b" ")
                closed = sock.recv(65536)
                break
            except TimeoutError:
                continue
            except OSError:
                break
        closed += read_reply(sock, 2)
        assert time.monotonic() - began < 5
    assert closed.startswith(b"HTTP/1.1 408"), closed
    assert json_of(closed)["error"]["code"] == "body_timeout"
    assert health(server)["timeouts"] == before + 1
    assert_good(server, good, None, 5)


def test_slow_bodies_at_the_connection_cap_make_way_for_a_new_client(shipped_model, good):
    with start(shipped_model, max_connections=8, body_timeout=60) as running:
        slow = [_open_post(running, 10_000) for _ in range(8)]
        try:
            for sock in slow:
                sock.sendall(b"{")
            time.sleep(1.3)  # each has now waited over a second for its client
            assert_good(running, good, None, 5)
            replies = [read_reply(sock, 0.5) for sock in slow]
            assert sum(reply.startswith(b"HTTP/1.1 408") for reply in replies) >= 1, replies
        finally:
            for sock in slow:
                sock.close()


def test_a_client_leaving_during_its_upload_is_a_disconnect(server, good):
    before = health(server)
    with _open_post(server, 10_000) as sock:
        sock.sendall(b'{"messages": [')
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while health(server)["disconnects"] == before["disconnects"]:
        assert time.monotonic() < deadline, health(server)
        time.sleep(0.05)
    assert health(server)["errors"] == before["errors"]
    assert_good(server, good, None, 5)


def test_an_unauthenticated_body_is_not_waited_for(shipped_model):
    with start(shipped_model, api_key=KEY) as running, _open_post(running, 1_000_000) as sock:
        sock.sendall(b"{")
        began = time.monotonic()
        reply = read_reply(sock, 5)
        assert reply.startswith(b"HTTP/1.1 401"), reply
        assert time.monotonic() - began < 2  # closed with the refusal, not after a keep-alive wait


def test_bodies_held_at_once_are_bounded(shipped_model, good):
    with start(shipped_model, max_inflight_body_bytes=1_000_000) as running:
        with _open_post(running, 800_000) as held:
            held.sendall(b"{")
            time.sleep(0.3)
            status, reply, _ = post(running, {**good, "padding": "x" * 400_000})
            assert status == 503 and reply["error"]["code"] == "server_busy", reply
        time.sleep(0.3)
        status, reply, _ = post(running, {**good, "padding": "x" * 400_000})
        assert status == 200, reply
        too_big = json.dumps({**good, "padding": "x" * 3_000_000}).encode()  # refused unread, yet the reply arrives
        status, reply, _ = post(running, too_big, headers={"Content-Type": "application/json"})
        assert status == 503 and reply["error"]["code"] == "server_busy", reply


# ---------------------------------------------------------------- HTTP, hosts, page


def test_malformed_http_gets_a_json_400(server):
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        reply = read_reply(sock, 5)
    assert reply.startswith(b"HTTP/1.1 400") and b"application/json" in reply, reply
    assert json_of(reply)["error"]["code"] == "invalid_http"


def test_a_keyless_server_answers_its_own_hosts_only(server, good):
    for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
        status, reply, _ = post(server, good, headers={"Host": host})
        assert status == 403 and reply["error"]["code"] == "host_not_allowed", (host, reply)
    for host in ("127.0.0.1", f"127.0.0.1:{address(server)[1]}", "localhost:8000", "[::1]:8000"):
        status, reply, _ = call(server.url, "GET", "/health", headers={"Host": host}, key=None)
        assert status == 200, (host, reply)


def test_a_keyless_server_refuses_cross_site_posts(server, good):
    status, reply, _ = post(server, json.dumps(good).encode(),
                            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status == 403 and reply["error"]["code"] == "cross_origin_refused", reply
    same = f"http://127.0.0.1:{address(server)[1]}"
    status, reply, _ = post(server, good, headers={"Origin": same})
    assert status == 200, reply


def test_named_hosts_and_keyed_servers(shipped_model, good):
    with start(shipped_model, allowed_hosts=("vt.example",)) as named, start(shipped_model, api_key=KEY) as keyed:
        status, _, _ = call(named.url, "GET", "/health", headers={"Host": "vt.example:8000"}, key=None)
        assert status == 200
        status, _, _ = call(named.url, "GET", "/health", headers={"Host": "other.example"}, key=None)
        assert status == 403
        status, reply, _ = call(keyed.url, "POST", CHAT, good, headers={"Host": "vt.example"})
        assert status == 200, reply  # a key is what a browser cannot send: no Host check then


def test_the_page_sends_security_headers(server):
    status, page, headers = call(server.url, "GET", "/", key=None)
    assert status == 200 and "<script>" in page
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'sha256-" in policy and "unsafe-eval" not in policy
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert call(server.url, "GET", "/health", key=None)[2]["x-content-type-options"] == "nosniff"
