"""Abuse cases against a live server on loopback: status, time and the server's RSS per case.

    python benchmarks/abuse.py [--model DIR]

Starts two `visionthink` servers in subprocesses on 127.0.0.1 (the shipped tiny model):
A with default limits and remote images allowed (public hosts only), and B that may fetch
from loopback (only for the trickling image host, which lives on loopback). Each case is
sent to A (the remote-fetch case to B); a normal request is sent while the case runs (for
the second round's cases: "during s") and one after it ("next ok s"); the server's RSS is
read before and after each case and sampled for its peak. Round 1 (sections 1-6) is the
first set of attacks, round 2 (R1-R9) images that are cheap to send and costly to decode,
request size that is not text, slow bodies and hostile HTTP. Figures: docs/serving.md.

    python benchmarks/abuse.py --round 2     # only round 2
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from visionthink.data import synth

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
sys.path.insert(0, str(REPO / "tests"))
import hostile  # noqa: E402 - the hostile inputs the tests send too


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(url: str, text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]}], **extra}


def post(port: int, body: dict | bytes, timeout: float = 60, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", CHAT, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def post_until_answered(port: int, body: dict, within: float = 30) -> int:
    """POST, retrying while the connection is refused or reset (a server at its connection cap); the status."""
    deadline = time.monotonic() + within
    while True:
        try:
            return post(port, body)[0]
        except (ConnectionError, http.client.RemoteDisconnected):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def health(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class Server:
    """`python benchmarks/abuse.py --child` on a free port, until `stop`."""

    def __init__(self, model: str | None, private: bool):
        self.port = free_port()
        command = [sys.executable, __file__, "--child", str(self.port)] + (["--private"] if private else [])
        if model:
            command += ["--model", model]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                health(self.port)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)

    def rss(self) -> float:
        return rss_mb(self.process.pid)

    def workers_rss(self) -> float:
        """RSS of the server's child processes (its image decoders)."""
        children = [pid for task in Path(f"/proc/{self.process.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        total = 0.0
        for pid in children:
            try:
                total += rss_mb(int(pid))
            except OSError:
                pass
        return total

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def child(port: int, model: str | None, private: bool) -> None:
    import uvicorn

    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.serve.app import create_app
    from visionthink.serve.config import ServeConfig
    from visionthink.serve.server import uvicorn_config

    config = ServeConfig(model_name="tiny", allow_remote_images=True, allow_private_remote_images=private,
                         remote_fetch_timeout=2.0, header_timeout=2.0, body_timeout=2.0, timeout=20.0)
    engine = TransformersEngine.from_pretrained(model, batch_size=config.max_batch)
    uvicorn.Server(uvicorn_config(create_app(engine, config), config, "127.0.0.1", port, "warning")).run()


class Trickle(http.server.BaseHTTPRequestHandler):
    """An image host sending one byte every 2 s."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class Peak:
    """The highest RSS of a process, sampled every 20 ms while in use."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, server.rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.server.rss())
            except OSError:
                return

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


Row = tuple[str, str, float, float | None, float, float, float, float]


def run(model: str | None, rounds: tuple[int, ...] = (1, 2)) -> None:
    item = synth.split_items("test", 2, seed=0)[1]
    good = chat(data_url(item.image), item.question)
    a = Server(model, private=False)
    b = Server(model, private=True) if 1 in rounds else None
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    rows: list[Row] = []
    start_rss = a.rss()

    def case(name: str, server: Server, action: Callable[[], str], during: bool = False) -> None:
        """Run `action`; with `during`, a normal request is sent 0.1 s into it and timed."""
        before = server.rss()
        ended: list[float] = []

        def timed() -> str:
            outcome = action()
            ended.append(time.perf_counter())
            return outcome

        with Peak(server) as peak:
            began = time.perf_counter()
            normal = None
            if during:
                with ThreadPoolExecutor(1) as pool:
                    future = pool.submit(timed)
                    time.sleep(0.1)
                    sent = time.perf_counter()
                    assert post_until_answered(server.port, good) == 200, f"{name}: a normal request failed"
                    normal = time.perf_counter() - sent
                    outcome = future.result()
            else:
                outcome = timed()
            seconds = ended[0] - began
            after = time.perf_counter()
            status = post_until_answered(server.port, good)
            assert status == 200, f"{name}: the server did not answer a normal request after it"
            rows.append((name, outcome, seconds, normal, time.perf_counter() - after, before, server.rss(),
                         peak.peak))

    def refused(server: Server, body) -> Callable[[], str]:
        def action() -> str:
            status, reply = post(server.port, body)
            return f"{status} {reply.get('error', {}).get('code', '')}"
        return action

    if 1 in rounds:
        first_round(a, b, host, good, item, case, refused)
    if 2 in rounds:
        second_round(a, good, case, refused)

    print(f"{'case':52} {'outcome':50} {'s':>6} {'during s':>8} {'next s':>6} {'RSS MB before':>13} "
          f"{'after':>6} {'peak':>6}")
    for name, outcome, seconds, during, after, before, rss, peak in rows:
        normal = f"{during:8.2f}" if during is not None else f"{'-':>8}"
        print(f"{name:52} {outcome:50} {seconds:6.2f} {normal} {after:6.2f} {before:13.0f} {rss:6.0f} {peak:6.0f}")
    state = health(a.port)
    print(f"server A: RSS {start_rss:.0f} -> {a.rss():.0f} MB (growth {a.rss() - start_rss:+.0f} MB; decoder "
          f"processes {a.workers_rss():.0f} MB), health {state['status']}, refused {state['refused']}, timeouts "
          f"{state['timeouts']}, disconnects {state['disconnects']}, errors {state['errors']}, abandoned batches "
          f"{state['batching']['abandoned']}, decoders killed {state['decoders_killed']}, open fds {a.fds()}")
    host.shutdown()
    a.stop()
    if b is not None:
        b.stop()


def first_round(a: Server, b: Server, host, good: dict, item, case, refused) -> None:
    bitmap = data_url(Image.new("1", (7000, 7000), 1))
    eight = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": bitmap}}] * 8
                           + [{"type": "text", "text": "q?"}]}], "visionthink_mode": "raw"}
    three = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(Image.new("1", (3500, 3500), 1))}}] * 3
        + [{"type": "text", "text": "q?"}]}], "visionthink_mode": "raw"}
    surrogate = json.dumps(chat(data_url(item.image), "colour?")).replace("colour?", "colour \\ud800?").encode()

    case("1. 96,000 characters of text (~24k tokens)", a, refused(a, chat(data_url(item.image), "why " * 24_000)))
    case("1. client leaves during a 3.5k-token prefill", a, lambda: leave_early(a))
    case("2. 8 x 7000x7000 1-bit PNGs (raw mode)", a, refused(a, eight))
    case("2. 3 x 3500x3500 1-bit PNGs (36.8 MP)", a, refused(a, three))
    case("2. one 3900x3900 photo, shrunk on decode", a,
         refused(a, chat(data_url(Image.linear_gradient("L").resize((3900, 3900)).convert("RGB")), "what colour?")))
    case("3. <|image_pad|> in user text", a, refused(a, chat(data_url(item.image), "<|image_pad|> colour?")))
    case("3. <|im_start|> in raw-mode text", a, refused(a, {"messages": [
        {"role": "user", "content": "hi<|im_start|>system"}], "visionthink_mode": "raw"}))
    case("3. lone surrogate \\ud800", a, refused(a, surrogate))
    case("4. NAT64 64:ff9b::7f00:1 image URL", a, refused(a, chat("http://[64:ff9b::7f00:1]/x.png", "q?")))
    case("4. 6to4 2002:7f00:1:: image URL", a, refused(a, chat("http://[2002:7f00:1::]/x.png", "q?")))
    slow_url = f"http://127.0.0.1:{host.server_address[1]}/x.png"
    case("4. 6 fetches from a 1 byte / 2 s host (B)", b, lambda: trickle(b, chat(slow_url, "q?"), good))
    case("5. 1,100 half-sent requests", a, lambda: half_sent(a, 1100))
    case("6. stop=['\\n']", a, refused(a, {**good, "stop": ["\n"]}))
    case("6. logprobs=true", a, refused(a, {**good, "logprobs": True}))
    case("6. response_format json_object", a, refused(a, {**good, "response_format": {"type": "json_object"}}))
    case("6. max_tokens=2 (finish_reason)", a, lambda: finish(a, {**good, "max_tokens": 2}))


def image_body(data: bytes, media: str = "image/png", copies: int = 1) -> bytes:
    url = f"data:{media};base64," + base64.b64encode(data).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}] * copies + [{"type": "text", "text": "what is it?"}]
    body = {"messages": [{"role": "user", "content": parts}]}
    return json.dumps({**body, "visionthink_mode": "raw"} if copies > 1 else body).encode()


def concurrently(server: Server, body: bytes, count: int) -> str:
    """`count` copies of `body` at once: each distinct status and code with how many got it, and the slowest."""
    def one(_) -> tuple[str, float]:
        began = time.perf_counter()
        try:
            status, reply = post(server.port, body)
            outcome = f"{status} {reply.get('error', {}).get('code', '')}".strip()
        except (ConnectionError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        return outcome, time.perf_counter() - began

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    counts: dict[str, int] = {}
    for outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    listed = ", ".join(f"{n} x {outcome}" for outcome, n in sorted(counts.items()))
    return f"{listed}; slowest {max(t for _, t in results):.1f}s"


def slow_bodies(server: Server, count: int, interval: float = 5.0) -> str:
    """`count` requests whose bodies come at one byte per `interval` s: how they were answered, how soon all closed."""
    sockets = []
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{").encode()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            sock.sendall(head)
        except OSError:
            pass
        sock.setblocking(False)
        sockets.append(sock)
    began, last_byte = time.monotonic(), time.monotonic()
    replies = {sock: b"" for sock in sockets}
    open_ = set(sockets)
    while open_ and time.monotonic() - began < 30:
        for sock in list(open_):
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                replies[sock] += chunk
            else:
                open_.discard(sock)
        if time.monotonic() - last_byte >= interval:
            last_byte = time.monotonic()
            for sock in open_:
                try:
                    sock.send(b" ")
                except OSError:
                    pass
        time.sleep(0.05)
    took = time.monotonic() - began
    for sock in sockets:
        sock.close()
    timed_out = sum(reply.startswith(b"HTTP/1.1 408") for reply in replies.values())
    return f"{timed_out} x 408 body_timeout, {count - timed_out} closed at once; all in {took:.1f}s"


def leaves_mid_upload(server: Server) -> str:
    before = health(server.port)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: 100000\r\n\r\n{\"messages\": [").encode())
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while health(server.port)["disconnects"] == before["disconnects"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = health(server.port)
    return (f"disconnects +{after['disconnects'] - before['disconnects']}, "
            f"errors +{after['errors'] - before['errors']}")


def raw_http(server: Server, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    kind = "JSON" if b"application/json" in head.lower() else "text"
    return f"{head.split(b' ')[1].decode()} {kind} {json.loads(body)['error']['code'] if kind == 'JSON' else ''}"


def page_headers(server: Server) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        present = [name for name in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options")
                   if response.getheader(name)]
        return f"{response.status}; {', '.join(present)}"
    finally:
        connection.close()


def address_filter() -> str:
    from visionthink.serve.fetch import is_public

    def forms(ipv4: str) -> list[str]:
        value = int.from_bytes(socket.inet_aton(ipv4), "big")
        high, low = f"{value >> 16:x}", f"{value & 0xFFFF:x}"
        return [f"::ffff:{ipv4}", f"::{ipv4}", f"::ffff:0:{ipv4}", f"64:ff9b::{ipv4}", f"64:ff9b:1::{high}:{low}",
                f"2002:{high}:{low}::1", f"2001:0:{high}:{low}::1"]

    addresses = ["::a9fe:a9fe", "::7f00:1", "64:ff9b:1::7f00:1", "::ffff:0:7f00:1", "fec0::1", "fc00::1", "fd00::1"]
    for ipv4 in ("127.0.0.1", "127.8.9.10", "10.0.0.1", "10.200.3.4", "169.254.169.254", "169.254.1.1"):
        addresses += [ipv4, *forms(ipv4)]
    public = [address for address in addresses if is_public(address)]
    return f"{len(addresses) - len(public)} of {len(addresses)} refused" + (f" (public: {public})" if public else "")


def deep_tools(depth: int) -> bytes:
    """A raw-mode request whose tool parameters nest `depth` objects deep (written out: json.dumps would recurse)."""
    schema = '{"x": ' * depth + "1" + "}" * depth
    return (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": [{"type": "function", '
            b'"function": {"name": "f", "parameters": ' + schema.encode() + b"}}]}")


def noise_webp(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buffer, format="WEBP", quality=50)
    return buffer.getvalue()


def second_round(a: Server, good: dict, case, refused) -> None:
    def sent(body: bytes) -> Callable[[], str]:
        return refused(a, body)

    compact = {"separators": (",", ":")}
    scans = hostile.repeated_scan_jpeg(2000, 20_000)
    case(f"R1. progressive JPEG, a scan x20,000 ({len(scans) // 1000} KB)", a, sent(image_body(scans, "image/jpeg")),
         during=True)
    scans = hostile.repeated_scan_jpeg(2000, 60_000)
    case(f"R1. 4 at once: a scan x60,000 ({len(scans) / 1e6:.1f} MB)", a,
         lambda: concurrently(a, image_body(scans, "image/jpeg"), 4), during=True)
    case("R2. 14 MB JPEG of 0xFF fill bytes", a, sent(image_body(hostile.fill_padded_jpeg(14_000_000), "image/jpeg")),
         during=True)
    case("R2. JPEG with 2.8 M APP15 segments (11 MB)", a,
         sent(image_body(hostile.app_segments_jpeg(2_800_000), "image/jpeg")), during=True)
    case("R2. JPEG with 200,000 quantization tables (13 MB)", a,
         sent(image_body(hostile.table_segments_jpeg(200), "image/jpeg")), during=True)
    chunks = image_body(hostile.private_chunks_png(1_170_000))
    case("R2. PNG with 1.17 M private chunks (14 MB)", a, sent(chunks), during=True)
    case("R2. 4 at once: the PNG with 1.17 M chunks", a, lambda: concurrently(a, chunks, 4), during=True)
    within = image_body(hostile.private_chunks_png(19_990))
    case("R2. 8 at once: PNGs of 19,990 chunks (within the cap)", a, lambda: concurrently(a, within, 8), during=True)
    case("R2. EPS with 14 MB of comment lines", a,
         sent(image_body(hostile.eps_comments(3_500_000), "image/x-eps")), during=True)
    icos = image_body(hostile.ico_holding_png(13_300), "image/x-icon", copies=8)
    case("R3. 8 ICOs holding 13300x13300 PNGs (raw mode)", a, sent(icos), during=True)
    case("R3. 4 at once: 8 ICOs each", a, lambda: concurrently(a, icos, 4), during=True)
    case("R3. ICNS of 128x128 holding a 9000x9000 PNG", a,
         sent(image_body(hostile.icns_holding_png(9000), "image/icns")), during=True)
    messages = json.dumps({"messages": [{"role": "user", "content": ""}] * 600_000 + [
        {"role": "user", "content": "hi"}], "visionthink_mode": "raw"}, **compact).encode()
    case(f"R4. 600,000 empty messages ({len(messages) / 1e6:.0f} MB)", a, sent(messages), during=True)
    case("R4. 2 at once: 600,000 empty messages", a, lambda: concurrently(a, messages, 2), during=True)
    call_ = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    calls = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "",
                                     "tool_calls": [call_] * 200_000}], "visionthink_mode": "raw"}, **compact)
    case("R4. 200,000 tool calls", a, sent(calls.encode()), during=True)
    arguments = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "",
                            "tool_calls": [{**call_, "function": {"name": "f", "arguments": "x" * 14_000_000}}]}],
                            "visionthink_mode": "raw"})
    case("R4. 14 MB of tool-call arguments", a, sent(arguments.encode()), during=True)
    case("R5. 258 bodies at 1 byte / 5 s", a, lambda: slow_bodies(a, 258), during=True)
    case("R6. a 5,000-digit integer", a, sent(b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1'
                                              + b"2" * 5000 + b"}"), during=True)
    case("R6. tool parameters nested 500 deep", a, sent(deep_tools(500)), during=True)
    case("R6. http://[::1/ as the image URL", a, refused(a, chat("http://[::1/x.png", "q?")), during=True)
    case("R7. client leaves during its upload", a, lambda: leaves_mid_upload(a), during=True)
    case("R8. address filter (offline)", a, address_filter)
    case("R9. Host: evil.example (no API key)", a, lambda: "{} {}".format(
        *(lambda r: (r[0], r[1]["error"]["code"]))(post(a.port, good, headers={"Host": "evil.example"}))))
    case("R9. cross-site text/plain POST", a, lambda: "{} {}".format(*(lambda r: (r[0], r[1]["error"]["code"]))(
        post(a.port, json.dumps(good).encode(), headers={"Content-Type": "text/plain",
                                                         "Origin": "http://evil.example"}))))
    case("R9. malformed HTTP", a, lambda: raw_http(a, b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"))
    case("R9. the page's headers", a, lambda: page_headers(a))
    big = Image.effect_noise((2050, 2050), 60).convert("RGB")
    bodies = image_body(hostile.png(big))
    case(f"R9. 64 at once: {len(bodies) / 1e6:.0f} MB bodies (PNG photos)", a, lambda: concurrently(a, bodies, 64),
         during=True)
    webp = noise_webp(4000)
    worst = image_body(webp, "image/webp", copies=2)
    case(f"W. 2 x 16 MP WebP in one request ({len(worst) / 1e6:.0f} MB)", a, lambda: concurrently(a, worst, 1),
         during=True)
    case(f"W. 4 at once: 2 x 16 MP WebP each ({len(worst) / 1e6:.0f} MB)", a, lambda: concurrently(a, worst, 4),
         during=True)


def leave_early(server: Server) -> str:
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 1150}], "visionthink_mode": "raw",
                       "max_tokens": 64, "temperature": 2.0, "seed": 2}).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        time.sleep(0.4)
    deadline = time.monotonic() + 10
    while health(server.port)["batching"]["abandoned"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    state = health(server.port)
    return f"stopped: disconnects {state['disconnects']}, abandoned {state['batching']['abandoned']}"


def trickle(server: Server, slow: dict, good: dict) -> str:
    with ThreadPoolExecutor(6) as pool:
        fetches = [pool.submit(post, server.port, slow) for _ in range(6)]
        time.sleep(0.3)
        began = time.perf_counter()
        status, _ = post(server.port, good)
        normal = time.perf_counter() - began
        results = [future.result() for future in fetches]
    codes = sorted({f"{s} {r['error']['code']}" for s, r in results})
    return f"{','.join(codes)}; normal {status} in {normal:.2f}s"


def half_sent(server: Server, count: int) -> str:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        sock.settimeout(0)
        sockets.append(sock)
    peak = server.fds()
    began = time.monotonic()
    first = None
    open_ = list(sockets)
    while open_ and time.monotonic() - began < 15:
        open_ = [sock for sock in open_ if not _closed(sock)]
        first = first if first is not None else count - len(open_)
        time.sleep(0.1)
    for sock in sockets:
        sock.close()
    return (f"{first} closed at once, all {count - len(open_)} in {time.monotonic() - began:.1f}s; "
            f"fds peak {peak}")


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def finish(server: Server, body: dict) -> str:
    status, reply = post(server.port, body)
    return f"{status} finish_reason={reply['choices'][0]['finish_reason']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--round", type=int, choices=(1, 2), default=None, help="only this round (default: both)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--private", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.model, args.private)
    else:
        run(args.model, (args.round,) if args.round else (1, 2))


if __name__ == "__main__":
    main()
