"""Does a model read the label from a zoom's crop? The prompt held as the model was trained (issue 12).

    python benchmarks/zoom_crops.py [MODEL] [--n 300]

On the small-label items among the first `--n` synthetic test items (trained and held-out wordings), the second
turn is written by the model after a first turn fixed to the canonical `resize_image` call, with the tool turn
holding either
- `high`: the full-resolution view (what the `oracle` mode gives), or
- `crop`: the oracle zoom's crop of the label (`images.zoom_crop` on the true box in low-res pixels; 2x2 tokens),
so the two differ only in the image. `eval --modes oracle-zoom` measures the whole zoom protocol instead (the
`visionthink-zoom` prompts, which the shipped model never saw).
"""

from __future__ import annotations

import argparse

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.grading import grade_answer
from visionthink.images import make_views, zoom_crop
from visionthink.profiles import VISIONTHINK
from visionthink.tools import RESIZE
from visionthink.tools.zoom import oracle_box
from visionthink.train.sft_data import think_for


def second_turns(engine: TransformersEngine, conversations: list[list[protocol.Message]]) -> list[str]:
    texts = []
    for start in range(0, len(conversations), engine.batch_size):
        batch = conversations[start : start + engine.batch_size]
        outputs = engine.session().generate(list(range(len(batch))), batch, [True] * len(batch))
        texts.extend(output.text for output in outputs)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    engine = TransformersEngine.from_pretrained(args.model, batch_size=32)
    grid = engine.grid
    print(f"model {args.model or 'shipped'}; small-label items among the first {args.n} test items")
    print("| wordings | n | high (oracle's tool turn) | crop (oracle zoom's crop) | crop tokens | high tokens |")
    print("|---|---|---|---|---|---|")
    for wordings in ("train", "heldout"):
        items = [i for i in synth.split_items("test", args.n, seed=0, wordings=wordings) if i.needs_high_res]
        rows = {"high": [], "crop": []}
        tokens = {"high": 0, "crop": 0}
        for item in items:
            views = make_views(item.image, grid)
            box = oracle_box(item.label_box, item.image.size, views.low.size)
            crop = zoom_crop(box, views, grid)
            think = think_for(item.question, item.question_type)
            for name, image in (("high", views.high), ("crop", crop)):
                call = VISIONTHINK.call_text(think, RESIZE.name, {"action": "resize"})
                rows[name].append([*protocol.first_turn(item.question, views.low), protocol.assistant_turn(call),
                                   protocol.tool_turn(RESIZE, image)])
                tokens[name] += grid.tokens(*image.size)
        scores = {}
        for name, conversations in rows.items():
            texts = second_turns(engine, conversations)
            answers = [protocol.parse_turn(text).answer for text in texts]
            scores[name] = sum(grade_answer(i.answer, a, i.question)[0] for i, a in zip(items, answers, strict=True))
        n = len(items)
        print(f"| {wordings} | {n} | {100 * scores['high'] / n:.1f}% | {100 * scores['crop'] / n:.1f}% | "
              f"{tokens['crop'] / n:.2f} | {tokens['high'] / n:.2f} |")


if __name__ == "__main__":
    main()
