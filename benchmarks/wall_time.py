"""Wall time of VisionThink against full resolution, split by whether the item needs high resolution.

    python benchmarks/wall_time.py [--quick] [--json] [--batch-sizes 32] [--real-batch-sizes 1,8]

Two models, each timed on the same items in `full` and in the mode under test, alternating batch by
batch in a shuffled order, and repeated; every ratio is mode time / full time within one repetition,
and the min and median over repetitions are printed.

- `tiny`: the shipped model on world-v2 test items. `low_enough` items (no high resolution
  needed) run `visionthink`; `needs_high` items run `visionthink` too (the model resizes them),
  and `oracle` for comparison. The engine's output memory (retrieval drafting) learns from
  other items before each timed run, never from the timed ones.
- `real`: the `real-vocab-small` preset (the real Qwen2.5 vocabulary, Qwen2.5-VL's image
  processor; random weights) at document sizes (1280x960, 1600x1200; `--real-sizes`). Random weights cannot
  decide, so `oracle` stands in for the decision: `low_enough` answers from the low view, and
  `needs_high` resizes. Every turn decodes a fixed budget (`--real-decode`, no stop token), so
  the random text does not skew the times; `--real-decision-decode N` gives the resize turn its
  own budget (the reasoning before the call), to show how the needs-high ratio depends on it.

`--phases` also prints where each turn's time goes (encode, prefill, decode; milliseconds per item).
`--json` prints `{"tiny": {"low_enough": R, "needs_high": R}, "real": {...}}` with the median ratios
at the first batch size of each model (the real preset at batch 1).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from visionthink.data import synth
from visionthink.engines.kv_decoder import OutputMemory, SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.models import load_model

REPO = Path(__file__).resolve().parents[1]
DOCUMENT_SIZES = ((1280, 960), (1600, 1200))


def timed_ratios(engine: TransformersEngine, requests: list[Request], mode: str, repeats: int,
                 seed: int, primer: list[Request] | None = None) -> dict[str, list[float]]:
    """`mode` time / `full` time on the same requests, once per repetition; also both modes' milliseconds per item.

    Within a repetition the two modes alternate batch by batch, in a shuffled order: this machine's speed drifts by
    +-20% over seconds (the same work's CPU time moves with it), and neighbouring batches see the same speed.
    Before each repetition each mode's `OutputMemory` starts empty and learns only from `primer` (other items, run
    untimed in that mode, as a server has seen other requests), then from the batches it runs: the timed items' own
    outputs from an earlier repetition are never replayed."""
    order = random.Random(seed)
    engine.run(requests[: engine.batch_size], "full")  # warm-up
    batches = [requests[i : i + engine.batch_size] for i in range(0, len(requests), engine.batch_size)]
    times: dict[str, list[float]] = {"ratio": [], "ms_mode": [], "ms_full": []}
    for _ in range(repeats):
        memories = {}
        if engine.memory is not None:
            for run in (mode, "full"):
                engine.memory = memories[run] = OutputMemory()
                if primer:
                    engine.run(primer, run)
        seconds = {mode: 0.0, "full": 0.0}
        for batch in batches:
            for run in order.sample([mode, "full"], 2):
                if memories:
                    engine.memory = memories[run]
                began = time.perf_counter()
                engine.run(batch, run)
                seconds[run] += time.perf_counter() - began
        times["ratio"].append(seconds[mode] / seconds["full"])
        times["ms_mode"].append(1000 * seconds[mode] / len(requests))
        times["ms_full"].append(1000 * seconds["full"] / len(requests))
    return times


@contextmanager
def phase_timer(engine: TransformersEngine) -> Iterator[dict[tuple[int, str], float]]:
    """Seconds spent per (turn, phase) while the block runs: `encode` (render, tokenize, image patches),
    `prefill` (vision tower and prompt) and `decode`, summed over batches; turn 0 is the first."""
    import visionthink.engines.transformers_engine as engine_module
    from visionthink.engines.kv_decoder import KVDecoder

    spent: dict[tuple[int, str], float] = {}
    turn = [0]

    def timed(function, phase):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = (turn[0], phase)
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - began
        return wrapper

    def counting_session(session):
        generate = session.generate

        def each_turn(*args, **kwargs):
            try:
                return generate(*args, **kwargs)
            finally:
                turn[0] += 1
        session.generate = each_turn
        return session

    originals = (engine_module.encode_batch_reusing, KVDecoder.prefill, KVDecoder.decode, engine.session)
    engine_module.encode_batch_reusing = timed(originals[0], "encode")
    KVDecoder.prefill = timed(originals[1], "prefill")
    KVDecoder.decode = timed(originals[2], "decode")
    def new_session():
        turn[0] = 0  # each batch's session starts at its first turn
        return counting_session(originals[3]())

    engine.session = new_session
    try:
        yield spent
    finally:
        engine_module.encode_batch_reusing, KVDecoder.prefill, KVDecoder.decode = originals[:3]
        del engine.session


def print_phases(label: str, engine: TransformersEngine, splits: dict[str, list[Request]], mode: str) -> None:
    """`phase_table` of `full` and `mode` on each split, to stderr."""
    for name, requests in splits.items():
        for line in phase_table(engine, requests, ("full", mode)):
            print(f"{label} {name} {line}", file=sys.stderr)


def phase_table(engine: TransformersEngine, requests: list[Request], modes: tuple[str, ...]) -> list[str]:
    """Milliseconds per item in each turn's encode / prefill / decode, one line per mode (one untimed warm run
    first): where a second turn's cost goes."""
    lines = []
    for mode in modes:
        engine.run(requests[: engine.batch_size], mode)
        with phase_timer(engine) as spent:
            began = time.perf_counter()
            engine.run(requests, mode)
            total = time.perf_counter() - began
        turns = sorted({turn for turn, _ in spent})
        parts = [f"turn {turn + 1}: " + " + ".join(
            f"{phase} {1000 * spent.get((turn, phase), 0.0) / len(requests):.1f}"
            for phase in ("encode", "prefill", "decode")) for turn in turns]
        lines.append(f"{mode}: {1000 * total / len(requests):.1f} ms per item; " + "; ".join(parts))
    return lines


def summary(times: dict[str, list[float]]) -> dict[str, float]:
    """Min and median ratio, and the median milliseconds per item of the mode and of `full`."""
    ratios = times["ratio"]
    return {"min": round(min(ratios), 3), "median": round(statistics.median(ratios), 3),
            "ms_per_item": round(statistics.median(times["ms_mode"]), 1),
            "full_ms_per_item": round(statistics.median(times["ms_full"]), 1)}


def tiny_ratios(args) -> dict[int, dict[str, dict[str, float]]]:
    model, processor = load_model(args.model)
    items = synth.split_items("test", args.tiny_items * 3, seed=11)
    needs = [Request(i.image, i.question, True) for i in items if i.needs_high_res][: args.tiny_items]
    enough = [Request(i.image, i.question, False) for i in items if not i.needs_high_res][: args.tiny_items]
    others = synth.split_items("validation", 96, seed=12)  # primes the output memory (`timed_ratios`)
    primer_needs = [Request(i.image, i.question, True) for i in others if i.needs_high_res][:32]
    primer_enough = [Request(i.image, i.question, False) for i in others if not i.needs_high_res][:32]
    results = {}
    for batch_size in args.batch_sizes:
        engine = TransformersEngine(model, processor, batch_size=batch_size)
        resized = sum(e.resized for e in engine.run(needs, "visionthink")) / len(needs)
        results[batch_size] = {
            "low_enough": summary(timed_ratios(engine, enough, "visionthink", args.repeats, 1, primer_enough)),
            "needs_high": summary(timed_ratios(engine, needs, "visionthink", args.repeats, 2, primer_needs)),
            "needs_high_oracle": summary(timed_ratios(engine, needs, "oracle", args.repeats, 3, primer_needs)),
            "needs_high_resized": round(resized, 3),
        }
        print(f"tiny batch {batch_size}: {results[batch_size]}", file=sys.stderr)
        if args.phases:
            print_phases(f"tiny batch {batch_size}", engine, {"needs_high": needs, "low_enough": enough}, "visionthink")
    return results


def document(width: int, height: int, seed: int) -> Image.Image:
    """A page: lines of small dark text-like marks on white."""
    rng = random.Random(seed)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    for top in range(40, height - 40, 28):
        left = 40
        while left < width - 80:
            word = rng.randint(20, 90)
            draw.rectangle([left, top, left + word, top + 12], fill=(rng.randint(0, 60),) * 3)
            left += word + rng.randint(8, 16)
    return page


class DecisionBudget(TransformersEngine):
    """An engine that decodes `decision_tokens` in a first turn that may call the tool (the oracle's resize turn)
    and the usual budget in every answer turn: a trained model's decision turn is its reasoning plus the call (the
    shipped tiny model writes 9 tokens before `<tool_call>`, whose fixed tail is drafted in one pass)."""

    decision_tokens: int = 24

    def session(self):
        session = super().session()
        generate, first_turn = session.generate, [True]

        def budgeted(rows, conversations, forbid_call):
            budget = self.sampling
            if first_turn[0] and not any(forbid_call):
                self.sampling = replace(budget, max_new_tokens=self.decision_tokens)
            first_turn[0] = False
            try:
                return generate(rows, conversations, forbid_call)
            finally:
                self.sampling = budget

        session.generate = budgeted
        return session


def real_ratios(args) -> dict[int, dict[str, dict[str, float]]]:
    from visionthink.models.presets import build_preset

    model, processor = build_preset("real-vocab-small")
    model.eval()
    sampling = SamplingConfig(max_new_tokens=args.real_decode)
    results = {}
    for batch_size in args.real_batch_sizes:
        pages = [document(*args.real_sizes[i % len(args.real_sizes)], seed=i) for i in range(args.real_items)]
        # no output memory and no repeat guess: random weights write no formulaic text, but greedy random weights
        # write their first turn again in the second, which the repeat guess would check in a few passes where a
        # trained model writes a new answer; a fixed budget times every token
        engine = DecisionBudget(model, processor, sampling=sampling, batch_size=batch_size, draft_memory=False,
                                draft_repeats=False)
        engine.decision_tokens = args.real_decode if args.real_decision_decode is None else args.real_decision_decode
        engine.stop_ids = [-1]  # a fixed decode budget: random weights never stop early
        needs = [Request(page, "What is the total on this page?", True) for page in pages]
        enough = [Request(page, "Is this a document?", False) for page in pages]
        first = engine.run(needs[:1], "oracle")[0]
        results[batch_size] = {
            "low_enough": summary(timed_ratios(engine, enough, "oracle", args.repeats, 4)),
            "needs_high": summary(timed_ratios(engine, needs, "oracle", args.repeats, 5)),
            "visual_tokens": {"low": first.visual_tokens_per_turn[0], "full": first.full_res_visual_tokens},
        }
        print(f"real batch {batch_size}: {results[batch_size]}", file=sys.stderr)
        if args.phases:
            print_phases(f"real batch {batch_size}", engine, {"needs_high": needs, "low_enough": enough}, "oracle")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "tiny-synth"))
    parser.add_argument("--batch-sizes", default="32", help="tiny model batch sizes, comma-separated")
    parser.add_argument("--real-batch-sizes", default="1,8", help="real-shape batch sizes, comma-separated")
    parser.add_argument("--tiny-items", type=int, default=96, help="items per split (needs high / low enough)")
    parser.add_argument("--real-items", type=int, default=8, help="document images per split")
    parser.add_argument("--real-decode", type=int, default=24, help="tokens decoded per turn on the real preset")
    parser.add_argument("--real-decision-decode", type=int, default=None,
                        help="tokens the real preset decodes in a turn that resizes, before the call "
                             "(default: --real-decode)")
    parser.add_argument("--real-sizes", default=",".join(f"{w}x{h}" for w, h in DOCUMENT_SIZES),
                        help="page sizes of the real-shape preset, WIDTHxHEIGHT comma-separated, used in turn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats (a few minutes)")
    parser.add_argument("--skip-real", action="store_true", help="the tiny model only")
    parser.add_argument("--skip-tiny", action="store_true", help="the real-shape preset only")
    parser.add_argument("--json", action="store_true", help="print the median ratios as JSON")
    parser.add_argument("--phases", action="store_true",
                        help="also print each turn's encode / prefill / decode milliseconds per item (to stderr)")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.real_batch_sizes = [int(b) for b in args.real_batch_sizes.split(",")]
    args.real_sizes = [tuple(int(n) for n in size.split("x")) for size in args.real_sizes.split(",")]
    if args.quick:
        args.tiny_items, args.real_items, args.repeats = 64, 8, 3
    torch.set_num_threads(args.threads)
    tiny = {} if args.skip_tiny else tiny_ratios(args)
    real = {} if args.skip_real else real_ratios(args)
    if args.json:
        report = {}
        if tiny:
            report["tiny"] = {key: tiny[args.batch_sizes[0]][key]["median"] for key in ("low_enough", "needs_high")}
        if real:
            first = real[args.real_batch_sizes[0]]
            report["real"] = {key: first[key]["median"] for key in ("low_enough", "needs_high")}
        print(json.dumps(report))
    else:
        print("model | batch | low_enough ratio (min / median) | ms per item vs full | "
              "needs_high ratio (min / median) | ms per item vs full")
        for name, results in (("tiny", tiny), ("real-vocab-small", real)):
            for batch_size, row in results.items():
                low, high = row["low_enough"], row["needs_high"]
                print(f"{name} | {batch_size} | {low['min']} / {low['median']} | {low['ms_per_item']} vs "
                      f"{low['full_ms_per_item']} | {high['min']} / {high['median']} | {high['ms_per_item']} vs "
                      f"{high['full_ms_per_item']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
