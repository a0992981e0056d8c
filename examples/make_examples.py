"""Regenerate the example images and `questions.json` in this folder from the synthetic world (deterministic).

    .venv/bin/python examples/make_examples.py            # rewrites examples/
    .venv/bin/python examples/make_examples.py --out DIR  # somewhere else

Each example is an item of the synthetic test split (`synth.split_items("test", n, seed=0)`) or of the ladder world's
(`synth.ladder_items`), asked in its own (trained) wording. They show the cases of the decision: a small label that
cannot be read at low resolution (the ladder model zooms on it, the resize model `checkpoints/tiny-synth` asks for the
whole image), labels spread over the image (only a resize shows them all), coarse questions answered from the low
view, and a large label where `tiny-synth` is unsure (P(tool) near 0.37), where the web page's threshold slider flips
the decision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionthink.data import synth

SPLIT, SEED = "test", 0
EXAMPLES = (
    # (file, index in the split, title, why it is here)
    ("small-label.png", 10, "small label",
     "the label's pattern is too fine for the low view: the model asks for full resolution"),
    ("unsure-label.png", 32, "unsure",
     "a large label the model is unsure about (P(tool) about 0.37 with tiny-synth): a threshold below that makes it "
     "ask for full resolution, one above makes it answer from the low view"),
    ("large-label.png", 8, "large label", "a label large enough to read at low resolution: answered from the low view"),
    ("colour.png", 0, "colour", "a coarse question: answered from the low view"),
    ("count.png", 3, "count", "a coarse question: answered from the low view"),
)
LADDER_EXAMPLES = (
    ("spread-labels.png", 5, "spread labels",
     "three small labels far apart: no zoom covers them all, so the ladder model asks for the whole image"),
)


def build(out: Path) -> list[dict]:
    """Write the example images and `questions.json` into `out`; return the index written."""
    out.mkdir(parents=True, exist_ok=True)
    items = synth.split_items(SPLIT, max(index for _, index, _, _ in EXAMPLES) + 1, seed=SEED)
    ladder = synth.ladder_items(SPLIT, max(index for _, index, _, _ in LADDER_EXAMPLES) + 1, seed=SEED)
    index = []
    for world, chosen, examples in (("synth", items, EXAMPLES), ("ladder", ladder, LADDER_EXAMPLES)):
        for file, position, title, why in examples:
            item = chosen[position]
            item.image.save(out / file, format="PNG")
            index.append({"file": file, "question": item.question, "answer": item.answer, "title": title,
                          "family": item.family, "needs_high_res": item.needs_high_res,
                          "source": f"{world} {SPLIT} split, seed {SEED}, item {position} ({item.uid})", "note": why})
    (out / "questions.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for entry in build(parser.parse_args().out):
        print(f"{entry['file']}: {entry['question']!r} -> {entry['answer']}")


if __name__ == "__main__":
    main()
