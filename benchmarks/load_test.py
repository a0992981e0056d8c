"""Load test: `visionthink serve` in a subprocess, concurrent clients over loopback.

    python benchmarks/load_test.py [--model DIR] [--clients 32] [--requests 10]

Starts the server on the tiny model, warms it up, then measures

- concurrency 1: one client sending `--requests-single` requests one after another;
- concurrency N: `--clients` clients, each sending `--requests` requests back to back
  (one keep-alive connection per client),

and prints, from this one run: errors, whether every request got an answer, p50/p95
latency, throughput, the server's batching (mean and largest batch), and the server's RSS
(`VmRSS` of its process) after warm-up and at the end (target: growth under 10%).
Traffic goes to 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from visionthink.data import synth

REPO = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bodies(n: int) -> list[bytes]:
    out = []
    for item in synth.split_items("test", n, seed=0):
        buffer = io.BytesIO()
        item.image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        out.append(json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": item.question}]}]}).encode())
    return out


class Client:
    """One keep-alive connection; `ask` returns (ok, answered, seconds, error)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def ask(self, body: bytes) -> tuple[bool, bool, float, str | None]:
        began = time.perf_counter()
        try:
            self.connection.request("POST", "/v1/chat/completions", body=body,
                                    headers={"Content-Type": "application/json"})
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.connection.close()
            return False, False, time.perf_counter() - began, f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - began
        if response.status != 200:
            return False, False, seconds, f"HTTP {response.status}: {payload[:200]!r}"
        reply = json.loads(payload)
        content = reply["choices"][0]["message"]["content"]
        return True, bool(content), seconds, None

    def close(self) -> None:
        self.connection.close()


def phase(port: int, requests: list[bytes], clients: int, per_client: int) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests in turn."""
    results: list[tuple] = []
    lock = threading.Lock()

    def run_client(index: int) -> None:
        client = Client(port)
        try:
            for k in range(per_client):
                outcome = client.ask(requests[(index * per_client + k) % len(requests)])
                with lock:
                    results.append(outcome)
        finally:
            client.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run_client, range(clients)))
    wall = time.perf_counter() - began
    latencies = sorted(r[2] for r in results)
    errors = [r[3] for r in results if not r[0]]
    return {
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "answered": sum(1 for r in results if r[1]),
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
        "throughput_rps": len(results) / wall,
        "wall_s": wall,
    }


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "tiny-synth"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10, help="requests per client at full concurrency")
    parser.add_argument("--requests-single", type=int, default=32, help="requests at concurrency 1")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "-m", "visionthink", "serve", "--model", args.model, "--port", str(port),
               "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
               "--log-level", "warning"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                print(server.stdout.read().decode(), file=sys.stderr)
                return 1
            try:
                get_json(port, "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.25)
        rss_loaded = rss_kib(server.pid)
        requests = bodies(64)
        print(f"server pid {server.pid} on 127.0.0.1:{port}, model {args.model}, max batch {args.max_batch}, "
              f"batch wait {args.batch_wait_ms} ms; {os.cpu_count()} CPUs on this machine")
        # Warm-up at both concurrency levels (first-time allocations are not growth).
        phase(port, requests, 1, 8)
        phase(port, requests, args.clients, 2)
        rss_warm = rss_kib(server.pid)
        peak = [rss_warm]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.2):
                peak.append(rss_kib(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        before = get_json(port, "/health")["batching"]
        single = phase(port, requests, 1, args.requests_single)
        middle = get_json(port, "/health")["batching"]
        many = phase(port, requests, args.clients, args.requests)
        after = get_json(port, "/health")["batching"]
        sampling.set()
        sampler.join()
        rss_end = rss_kib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    def batches(a: dict, b: dict) -> str:
        jobs, count = b["jobs"] - a["jobs"], b["batches"] - a["batches"]
        return f"{jobs / count:.1f}" if count else "-"

    print()
    print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'answered':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'req/s':>7} {'mean batch':>10}")
    for label, result, batch in ((1, single, batches(before, middle)), (args.clients, many, batches(middle, after))):
        print(f"{label:>11} {result['requests']:>8} {result['errors']:>6} {result['answered']:>8} "
              f"{result['p50_ms']:>8.1f} {result['p95_ms']:>8.1f} {result['throughput_rps']:>7.2f} {batch:>10}")
        if result["first_error"]:
            print(f"  first error: {result['first_error']}")
    print(f"\nthroughput x{many['throughput_rps'] / single['throughput_rps']:.2f} at concurrency {args.clients} "
          f"vs 1; largest batch {after['largest_batch']}")
    growth = 100 * (rss_end - rss_warm) / rss_warm
    print(f"server RSS: {rss_loaded / 1024:.0f} MiB loaded, {rss_warm / 1024:.0f} MiB after warm-up, "
          f"{max(peak) / 1024:.0f} MiB peak, {rss_end / 1024:.0f} MiB at the end: "
          f"{growth:+.1f}% over the measured run (target < 10%)")
    total = single["requests"] + many["requests"]
    errors = single["errors"] + many["errors"]
    answered = single["answered"] + many["answered"]
    ok = errors == 0 and answered == total and growth < 10
    print(f"{'PASS' if ok else 'FAIL'}: {errors} errors, {answered}/{total} answers returned")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
