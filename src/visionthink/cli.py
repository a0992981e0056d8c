"""The `visionthink` command line."""

from __future__ import annotations

import argparse
import sys

from visionthink.errors import VisionThinkError


def _train_sft(args: argparse.Namespace) -> int:
    from visionthink.recipes import load_recipe
    from visionthink.train.sft import SFTConfig, train_sft

    config = load_recipe(args.recipe, "sft", SFTConfig, args.overrides)
    final = train_sft(config)
    print(f"final model: {final}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionthink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="trainer", required=True)
    sft = train.add_parser("sft", help="supervised warm start of the tiny model on the synthetic world")
    sft.add_argument("--recipe", default=None, help="YAML recipe (section `sft:`)")
    sft.add_argument("overrides", nargs="*", help="recipe overrides as key=value")
    sft.set_defaults(handler=_train_sft)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except VisionThinkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
