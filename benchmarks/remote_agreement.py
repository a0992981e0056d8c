"""`visionthink eval --engine remote` against `transformers serve` (the stand-in for `vllm serve`) and the local engine.

Starts `transformers serve --trust-remote-code MODEL` on loopback, runs `visionthink eval` locally and then remotely
at each `--concurrency`, and prints, per bench and mode: item-by-item agreement (answer and resize decision), the
score and visual tokens of both, and each run's wall time.

    python benchmarks/remote_agreement.py --n 200 --concurrency 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    command = [str(BIN / "transformers"), "serve", str(model), "--trust-remote-code", "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    cache = log.parent / "hf-cache"  # transformers 5.17 answers /v1/models with a 500 while it does not exist
    cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(cache)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"transformers serve did not start: {log.read_text()[-2000:]}")


def run_eval(out: Path, args: argparse.Namespace, extra: list[str]) -> float:
    command = [str(BIN / "visionthink"), "eval", "--bench", args.bench, "--modes", args.modes, "--limit",
               str(args.n), "--out", str(out), "--no-progress", "--json", "--model", str(args.model), *extra]
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def samples(out: Path) -> dict[tuple[str, str, str], dict]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {(row["bench"], row["mode"], row["uid"]): row for row in rows}


def compare(local: dict, remote: dict) -> dict[tuple[str, str], dict]:
    table: dict[tuple[str, str], dict] = {}
    for key, want in local.items():
        got = remote[key]
        cell = table.setdefault(key[:2], {"n": 0, "agree": 0, "tokens_equal": 0, "prompt_equal": 0,
                                          "score_local": 0.0, "score_remote": 0.0, "vt_local": 0, "vt_remote": 0})
        cell["n"] += 1
        cell["agree"] += (got["prediction"], got["resized"]) == (want["prediction"], want["resized"])
        cell["tokens_equal"] += got["visual_tokens"] == want["visual_tokens"]
        cell["prompt_equal"] += got["prompt_tokens"] == want["prompt_tokens"]
        cell["score_local"] += want["score"]
        cell["score_remote"] += got["score"]
        cell["vt_local"] += want["visual_tokens"]
        cell["vt_remote"] += got["visual_tokens"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints" / "tiny-synth")
    parser.add_argument("--n", type=int, default=200, help="items per bench")
    parser.add_argument("--bench", default="synth,synth-heldout")
    parser.add_argument("--modes", default="full,low,visionthink")
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        port = free_port()
        server = start_server(args.model, port, scratch / "server.log")
        try:
            seconds = {"local": run_eval(scratch / "local", args, [])}
            local = samples(scratch / "local")
            tables = {}
            for concurrency in args.concurrency.split(","):
                name = f"remote c{concurrency}"
                seconds[name] = run_eval(scratch / name.replace(" ", "-"), args, [
                    "--engine", "remote", "--base-url", f"http://127.0.0.1:{port}/v1", "--concurrency", concurrency])
                tables[name] = compare(local, samples(scratch / name.replace(" ", "-")))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"model {args.model}, {args.n} items per bench, greedy; transformers serve on CPU (loopback)\n")
    for name, table in tables.items():
        print(f"{name}: agreement with the local engine (answer and resize decision)")
        print(f"{'bench/mode':28} {'agree':>9} {'vis.tok =':>9} {'prompt =':>9} {'score loc':>9} {'score rem':>9} "
              f"{'vis.tok loc':>11} {'vis.tok rem':>11}")
        for (bench, mode), cell in table.items():
            n = cell["n"]
            print(f"{bench + '/' + mode:28} {cell['agree'] / n:9.1%} {cell['tokens_equal'] / n:9.1%} "
                  f"{cell['prompt_equal'] / n:9.1%} {100 * cell['score_local'] / n:9.1f} "
                  f"{100 * cell['score_remote'] / n:9.1f} {cell['vt_local'] / n:11.2f} {cell['vt_remote'] / n:11.2f}")
        print()
    print("wall time of each eval run (all benches and modes): " + ", ".join(
        f"{name} {value:.1f} s" for name, value in seconds.items()))
    local_time = seconds["local"]
    print("ratios to local: " + ", ".join(f"{name} {value / local_time:.2f}x" for name, value in seconds.items()
                                          if name != "local"))


if __name__ == "__main__":
    main()
