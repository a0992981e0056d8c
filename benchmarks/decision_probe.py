"""Where a model stands on the resize decision, per family (and per pattern of the large labels).

    python benchmarks/decision_probe.py MODEL [MODEL ...] [--items 240] [--samples 3]

For held-out validation items it prints:
- `P(tool)`: the probability of `<tool_call>` at the decision token (the first token after the
  canonical think block, teacher-forced), averaged;
- `greedy resize`: the share of items a greedy `visionthink` run resizes;
- `low, T=1`: low-res direct-answer accuracy with the tool banned, sampled at temperature 1
  (`--samples` draws per item). This is what GRPO's direct rollouts earn: with the paper's reward a
  correct direct answer beats a correct resized one only by the 0.1 penalty, so low resolution wins
  a group only where this is above about 90%.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.transformers_engine import Request, SamplingConfig, TransformersEngine
from visionthink.images import make_views
from visionthink.models import load_model
from visionthink.tokens import encode
from visionthink.train.sft_data import think_for


def key(item: synth.Item) -> str:
    return f"fine_large/{item.answer}" if item.family == "fine_large" else item.family


@torch.no_grad()
def tool_probabilities(model_dir: str, items: list[synth.Item]) -> list[float]:
    model, processor = load_model(model_dir, dtype=torch.float32, device="cpu")
    tokenizer = processor.tokenizer
    tool_id = tokenizer.convert_tokens_to_ids("<tool_call>")
    probabilities = []
    for item in items:
        views = make_views(item.image, processor.grid)
        batch = encode(processor, protocol.first_turn(item.question, views.low), add_generation_prompt=True)
        think = tokenizer.encode(f"<think>{think_for(item.question)}</think>\n", add_special_tokens=False)
        extra = torch.tensor([think])
        batch["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(extra)], 1)
        logits = model(**batch).logits[0, -1].float()
        probabilities.append(logits.softmax(-1)[tool_id].item())
    return probabilities


def probe(model_dir: str, items: list[synth.Item], samples: int) -> dict[str, dict[str, float]]:
    requests = [Request(item.image, item.question) for item in items]
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item, p in zip(items, tool_probabilities(model_dir, items), strict=True):
        rows[key(item)]["P(tool)"].append(p)
    greedy = TransformersEngine.from_pretrained(model_dir, batch_size=64)
    for item, episode in zip(items, greedy.run(requests, mode="visionthink"), strict=True):
        rows[key(item)]["greedy resize"].append(float(episode.resized))
    sampled = TransformersEngine.from_pretrained(
        model_dir, sampling=SamplingConfig(do_sample=True, temperature=1.0, seed=0), batch_size=64
    )
    for _ in range(samples):
        for item, episode in zip(items, sampled.run(requests, mode="low"), strict=True):
            rows[key(item)]["low, T=1"].append(float(episode.answer == item.answer))
    return {name: {column: sum(v) / len(v) for column, v in columns.items()} for name, columns in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--items", type=int, default=240, help="validation items (families cycle)")
    parser.add_argument("--samples", type=int, default=3, help="sampled low-res answers per item")
    args = parser.parse_args()
    torch.set_num_threads(1)
    items = synth.split_items("validation", args.items)
    columns = ("P(tool)", "greedy resize", "low, T=1")
    for model_dir in args.models:
        table = probe(model_dir, items, args.samples)
        print(f"\n{model_dir} ({args.items} validation items)\n")
        print("| items | n | " + " | ".join(columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        counts = defaultdict(int)
        for item in items:
            counts[key(item)] += 1
        for name in sorted(table):
            print(f"| {name} | {counts[name]} | " + " | ".join(f"{100 * table[name][c]:.0f}%" for c in columns) + " |")


if __name__ == "__main__":
    main()
