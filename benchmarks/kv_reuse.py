"""The resize path with KV reuse against recomputing the prefix (transformers engine, one run).

    python benchmarks/kv_reuse.py [--model DIR] [--n 64] [--repeats 3]

On oracle-mode requests that all need high resolution (so every episode takes the resize
path), runs `TransformersEngine(reuse_cache=True)` (the resize turn is fed on top of the first
turn's cache) and `TransformersEngine(reuse_cache=False)` (a fresh cache: the whole prefix,
first image included, is computed again), alternating, `--repeats` times each after a
warm-up. Prints wall times (whole episodes and the resize turn alone), their ratio, and the
prompt tokens each engine's prefill computed (`engine.prefill_tokens`), and checks both
engines produced the same turns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.models import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "tiny-synth"))
    parser.add_argument("--n", type=int, default=64, help="requests (all needing high resolution)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = load_model(args.model)
    pool = synth.split_items("test", args.n * 4, seed=0)
    items = [item for item in pool if item.needs_high_res][: args.n]
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    engines = {
        "reuse": TransformersEngine(model, processor, batch_size=args.batch_size, reuse_cache=True),
        "recompute": TransformersEngine(model, processor, batch_size=args.batch_size, reuse_cache=False),
    }
    for engine in engines.values():  # warm-up
        engine.run(requests[: args.batch_size], "oracle")
    wall = {name: [] for name in engines}
    resize_turn = {name: [] for name in engines}
    prefill = {}
    turns = {}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            engine.prefill_tokens = 0
            began = time.perf_counter()
            episodes = engine.run(requests, "oracle")
            wall[name].append(time.perf_counter() - began)
            resize_turn[name].append(sum(e.seconds.get("turn2", 0.0) for e in episodes))
            prefill[name] = engine.prefill_tokens
            turns[name] = [e.summary()["turns"] for e in episodes]
    resized = sum(1 for t in turns["reuse"] if len(t) == 2)
    print(f"model {args.model}; {len(requests)} oracle-mode requests, all needing high resolution "
          f"({resized} resized), batch {args.batch_size}, {args.threads} torch thread(s), "
          f"median of {args.repeats} alternating runs")
    print(f"{'engine':>10} {'episodes s':>10} {'resize turn s':>13} {'prefill tokens':>14}")
    for name in engines:
        print(f"{name:>10} {statistics.median(wall[name]):>10.3f} {statistics.median(resize_turn[name]):>13.3f} "
              f"{prefill[name]:>14}")
    ratio = statistics.median(wall["reuse"]) / statistics.median(wall["recompute"])
    turn_ratio = statistics.median(resize_turn["reuse"]) / statistics.median(resize_turn["recompute"])
    token_ratio = prefill["reuse"] / prefill["recompute"]
    print(f"reuse / recompute: episodes {ratio:.2f}x wall time, resize turn {turn_ratio:.2f}x wall time, "
          f"{token_ratio:.2f}x prefill tokens ({prefill['recompute'] - prefill['reuse']} tokens not recomputed)")
    same = turns["reuse"] == turns["recompute"]
    print(f"same turns from both engines: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
