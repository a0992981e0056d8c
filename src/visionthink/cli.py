"""The `visionthink` command line."""

from __future__ import annotations

import argparse
import sys

from visionthink.errors import VisionThinkError
from visionthink.images import DEFAULT_MAX_INPUT_PIXELS


def _train_sft(args: argparse.Namespace) -> int:
    from visionthink.recipes import load_recipe
    from visionthink.train.sft import SFTConfig, train_sft

    config = load_recipe(args.recipe, "sft", SFTConfig, args.overrides)
    final = train_sft(config)
    print(f"final model: {final}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    import json
    import time

    from visionthink.engines.transformers_engine import Request, TransformersEngine
    from visionthink.images import load_image

    began = time.perf_counter()
    image = load_image(args.image, max_input_pixels=args.max_input_pixels)
    engine = TransformersEngine.from_pretrained(args.model)
    if args.mode == "oracle":
        raise VisionThinkError("`ask` has no oracle: an arbitrary image carries no needs-high-res label")
    episode = engine.run([Request(image, args.question)], args.mode)[0]
    seconds = time.perf_counter() - began
    if args.json:
        print(json.dumps({
            "answer": episode.answer,
            "resized": episode.resized,
            "visual_tokens": episode.visual_tokens,
            "full_res_visual_tokens": episode.full_res_visual_tokens,
            "seconds": round(seconds, 3),
            "turns": episode.summary()["turns"],
        }))
    else:
        print(f"answer: {episode.answer}")
        print(f"resized: {'yes' if episode.resized else 'no'}")
        share = 100 * episode.visual_tokens / episode.full_res_visual_tokens
        print(f"visual tokens: {episode.visual_tokens} (full resolution: {episode.full_res_visual_tokens}, "
              f"{share:.0f}%)")
        print(f"seconds: {seconds:.2f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from visionthink.data import synth
    from visionthink.engines.transformers_engine import MODES, TransformersEngine
    from visionthink.eval.synth_run import format_table, run_modes

    engine = TransformersEngine.from_pretrained(args.model, batch_size=args.batch_size)
    items = synth.split_items("test", args.n, seed=args.seed)
    print(f"{len(items)} held-out synthetic test items (seed {args.seed}), greedy, model {args.model or 'shipped'}")
    results = run_modes(engine, items, list(MODES))
    print(format_table(results))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from visionthink.data.export import write_synth_dataset

    path = write_synth_dataset(args.out, args.n, args.seed, args.splits.split(","))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionthink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="trainer", required=True)
    sft = train.add_parser("sft", help="supervised warm start of the tiny model on the synthetic world")
    sft.add_argument("--recipe", default=None, help="YAML recipe (section `sft:`)")
    sft.add_argument("overrides", nargs="*", help="recipe overrides as key=value")
    sft.set_defaults(handler=_train_sft)

    ask = commands.add_parser("ask", help="ask one image a question")
    ask.add_argument("image", help="image file")
    ask.add_argument("question")
    ask.add_argument("--model", default=None, help="model folder (default: the shipped tiny checkpoint)")
    ask.add_argument("--mode", default="visionthink", choices=["visionthink", "full", "low"])
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--max-input-pixels", type=int, default=DEFAULT_MAX_INPUT_PIXELS,
                     help="refuse larger images (decompression bombs)")
    ask.set_defaults(handler=_ask)

    demo = commands.add_parser("demo", help="all four modes on held-out synthetic test items")
    demo.add_argument("--model", default=None)
    demo.add_argument("--n", type=int, default=300, help="number of test items")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.set_defaults(handler=_demo)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic world as Hugging Face datasets")
    synth.add_argument("--out", required=True)
    synth.add_argument("--n", type=int, default=600, help="items per split")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--splits", default="train,validation,test")
    synth.set_defaults(handler=_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except VisionThinkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
