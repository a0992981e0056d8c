"""What recording the answer's confidence costs: episodes with the token probabilities recorded against the same
episodes without, on one engine, alternating run by run in a shuffled order.

    python benchmarks/confidence_cost.py [--items 96] [--repeats 5] [--json]

- `tiny`: the shipped ladder model on ladder test items in its own `zoom` mode (vocabulary 1,024).
- `real-vocab`: the `real-vocab-small` preset (the real Qwen2.5 vocabulary, 151,665 logits a token; random weights)
  on the same items in `low` mode, every turn decoding `--real-decode` tokens: the probability of each written token
  costs a pass over that many logits.

Prints, per model, the median and the min over repetitions of time with / time without.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from visionthink.data import synth
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine

REPO = Path(__file__).resolve().parents[1]


def ratios(engine: TransformersEngine, requests: list[Request], mode: str, repeats: int) -> list[float]:
    """Per repetition: seconds with recording / seconds without, the two runs in a random order."""
    engine.run(requests[: engine.batch_size], mode)  # warm-up
    out = []
    for _ in range(repeats):
        seconds = {}
        for recording in random.sample([True, False], 2):
            engine.records_confidence = recording
            began = time.perf_counter()
            engine.run(requests, mode)
            seconds[recording] = time.perf_counter() - began
        out.append(seconds[True] / seconds[False])
    engine.records_confidence = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-decode", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    items = synth.ladder_items("test", args.items, seed=0)
    requests = [Request(i.image, i.question) for i in items]
    results = {}
    tiny = TransformersEngine.from_pretrained(REPO / "checkpoints" / "tiny-ladder", batch_size=32)
    results["tiny"] = ratios(tiny, requests, "zoom", args.repeats)
    from visionthink.models.presets import build_preset

    model, processor = build_preset("real-vocab-small")
    real = TransformersEngine(model, processor, batch_size=8, draft_memory=False, draft_repeats=False,
                              sampling=SamplingConfig(max_new_tokens=args.real_decode))
    real.stop_ids = [-1]  # a fixed decode budget: random weights never stop early
    results["real-vocab"] = ratios(real, requests[: max(8, args.items // 4)], "low", args.repeats)
    summary = {name: {"median": statistics.median(r), "min": min(r)} for name, r in results.items()}
    if args.json:
        print(json.dumps(summary))
        return
    for name, figures in summary.items():
        print(f"{name}: with / without recording the answer's confidence: median {figures['median']:.3f}, "
              f"min {figures['min']:.3f} over {args.repeats} repetitions")


if __name__ == "__main__":
    main()
