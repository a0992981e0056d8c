"""The resize-penalty ablation: the same GRPO budget for each variant, then a greedy evaluation of each.

    python benchmarks/penalty_ablation.py [--steps 150] [--variants none,flat,paper,release] \
        [--runs runs/ablation] [--docs docs] [--name penalty-ablation] [--set penalty=0.8 ...] \
        [--parallel 1] [--limit 600]

Each variant runs `visionthink train grpo --recipe recipes/tiny-synth.yaml penalty_variant=V max_steps=N
output_dir=RUNS/V export_dir=null` plus the `--set` overrides (a finished run is not repeated, a killed
one resumes), then `visionthink eval --model RUNS/V/final --modes visionthink --limit 600 --out RUNS/V/eval`. Writes
DOCS/NAME.md (the table) and DOCS/NAME.png (training resize ratio per family,
one panel per variant). On a GPU the runs use it; `--parallel 4` runs the variants side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FAMILIES = ("coarse", "fine_small", "fine_large")
VT = [sys.executable, "-m", "visionthink"]


def train_and_eval(variant: str, args: argparse.Namespace) -> None:
    run = Path(args.runs) / variant
    if not (run / "final" / "config.json").is_file():
        subprocess.run([*VT, "train", "grpo", "--recipe", args.recipe, f"penalty_variant={variant}",
                        f"max_steps={args.steps}", f"output_dir={run}", "export_dir=null", *args.set], check=True)
    if not (run / "eval" / "summary.json").is_file():
        subprocess.run([*VT, "eval", "--model", str(run / "final"), "--bench", "synth", "--modes", "visionthink",
                        "--limit", str(args.limit), "--out", str(run / "eval"), "--no-progress"], check=True)


def summary_row(variant: str, run: Path) -> str:
    result = json.loads((run / "eval" / "summary.json").read_text())["synth"]["visionthink"]
    families = result["per_family"]
    resize = " / ".join(f"{100 * families[f]['resize_ratio']:.1f}%" for f in FAMILIES)
    score = " / ".join(f"{100 * families[f]['score']:.1f}%" for f in FAMILIES)
    steps = len([line for line in (run / "log.jsonl").read_text().splitlines() if '"resize_ratio"' in line])
    return (f"| `{variant}` | {steps} | {resize} | {100 * result['score']:.1f}% ({score}) | "
            f"{result['visual_tokens']:.2f} |")


def plot(variants: list[str], runs: Path, path: Path, window: int = 15) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from visionthink.train.grpo_plots import moving_average

    figure, axes = plt.subplots(1, len(variants), figsize=(3.2 * len(variants), 3.2), sharey=True)
    for axis, variant in zip(list(axes) if len(variants) > 1 else [axes], variants, strict=True):
        rows = [json.loads(line) for line in (runs / variant / "log.jsonl").read_text().splitlines()]
        for family in FAMILIES:
            points = [(r["step"], r[f"resize_ratio/{family}"]) for r in rows if f"resize_ratio/{family}" in r]
            axis.plot([s for s, _ in points], moving_average([v for _, v in points], window), label=family)
        axis.set_title(variant)
        axis.set_xlabel("step")
        axis.set_ylim(-0.02, 1.02)
    axes_list = list(axes) if len(variants) > 1 else [axes]
    axes_list[0].set_ylabel(f"training resize ratio ({window}-step mean)")
    axes_list[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny-synth.yaml")
    parser.add_argument("--variants", default="none,flat,paper,release")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--runs", default="runs/ablation")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--name", default="penalty-ablation", help="stem of the table and plot files in --docs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every variant (repeatable), e.g. penalty=0.8")
    args = parser.parse_args()
    variants = args.variants.split(",")
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda v: train_and_eval(v, args), variants))
    runs, docs = Path(args.runs), Path(args.docs)
    plot(variants, runs, docs / f"{args.name}.png")
    command = " ".join(["python benchmarks/penalty_ablation.py", f"--steps {args.steps}", f"--variants {args.variants}",
                        *[f"--set {o}" for o in args.set], f"--runs {args.runs}", f"--name {args.name}"])
    overrides = f" with {', '.join(f'`{o}`' for o in args.set)}" if args.set else ""
    lines = [
        f"Greedy, {args.limit} held-out items, after the same GRPO budget (`steps={args.steps}`){overrides} from the "
        f"same warm start; regenerate with `{command}`.",
        "",
        "| penalty | steps | resize coarse / fine_small / fine_large | accuracy (c / fs / fl) | visual tokens |",
        "|---|---|---|---|---|",
        *[summary_row(v, runs / v) for v in variants],
        "",
        f"![training resize ratio per family]({args.name}.png)",
    ]
    (docs / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
