"""Curate RL training data by sampled rollouts at each resolution (paper section 3.5).

For every item, k sampled answers at low resolution and k at full resolution are graded:
- "low_res_enough": all k correct at both resolutions;
- "needs_high_res": full resolution correct at least ceil(0.75 k) more times than low resolution
  (6 of 8, as in the paper);
- "discard": anything else (too hard, too noisy, or only a little better at high resolution).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from visionthink.errors import VisionThinkError
from visionthink.grading import exact_match

LOW_RES_ENOUGH = "low_res_enough"
NEEDS_HIGH_RES = "needs_high_res"
DISCARD = "discard"
LABELS = (LOW_RES_ENOUGH, NEEDS_HIGH_RES, DISCARD)
ADDED_COLUMNS = ("label", "low_correct", "high_correct", "k")
REQUIRED_COLUMNS = ("image", "question", "answer")
REPORT_FILE = "curation.json"


def high_res_margin(k: int) -> int:
    """How many more correct high-res rollouts "needs high-res" asks for: 6 of 8, scaled with k."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return math.ceil(0.75 * k)


def label_item(low_correct: int, high_correct: int, k: int) -> str:
    """The curation label of one item from its correct-rollout counts at each resolution."""
    if not (0 <= low_correct <= k and 0 <= high_correct <= k):
        raise ValueError(f"counts ({low_correct}, {high_correct}) outside [0, {k}]")
    if low_correct == k and high_correct == k:
        return LOW_RES_ENOUGH
    if high_correct - low_correct >= high_res_margin(k):
        return NEEDS_HIGH_RES
    return DISCARD


def is_correct(prediction: str | None, truth: Any) -> bool:
    truths = truth if isinstance(truth, (list, tuple)) else [truth]
    return any(exact_match(prediction, str(t)) for t in truths)


@dataclass
class Curation:
    """Per-item counts and labels, and the confusion of labels against the items' own `needs_high_res`."""

    k: int
    low_correct: list[int]
    high_correct: list[int]
    labels: list[str]
    families: list[str]
    needs_high_res: list[bool | None]
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    def confusion(self) -> dict[str, dict[str, dict[str, int]]]:
        """`{family: {needs_high_res (true/false/unknown): {label: count}}}`, with an "all" family."""
        table: dict[str, dict[str, dict[str, int]]] = {}
        for family, need, label in zip(self.families, self.needs_high_res, self.labels, strict=True):
            truth = "unknown" if need is None else str(bool(need)).lower()
            for name in (family, "all"):
                cell = table.setdefault(name, {}).setdefault(truth, dict.fromkeys(LABELS, 0))
                cell[label] += 1
        if "all" in table:
            table["all"] = table.pop("all")
        return table

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "high_res_margin": high_res_margin(self.k),
            "items": len(self.labels),
            "labels": {label: self.labels.count(label) for label in LABELS},
            "confusion": self.confusion(),
            "notes": self.notes,
        }


def format_confusion(curation: Curation) -> str:
    """A plain-text table: per family and `needs_high_res` truth, how many items got each label."""
    header = ["family", "truth", *[f"-> {label}" for label in LABELS], "n", "% -> needs_high_res"]
    rows = []
    for family, by_truth in curation.confusion().items():
        for truth, counts in sorted(by_truth.items()):
            n = sum(counts.values())
            rows.append([family, f"needs_high_res={truth}", *[str(counts[label]) for label in LABELS], str(n),
                         f"{100 * counts[NEEDS_HIGH_RES] / n:.1f}"])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def load_items(data: str | Path, split: str = "train", limit: int | None = None):
    """The dataset to curate: a `save_to_disk` folder (a DatasetDict, whose `split` is used, or a Dataset)."""
    from datasets import DatasetDict, load_from_disk

    path = Path(data)
    if not path.exists():
        raise VisionThinkError(f"{path}: no such dataset folder (write one with `visionthink data synth --out DIR`)")
    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise VisionThinkError(f"{path}: not a Hugging Face `save_to_disk` folder ({error})") from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise VisionThinkError(f"{path}: no split {split!r}; it has {', '.join(dataset)}")
        dataset = dataset[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise VisionThinkError(f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def count_correct(engine, dataset, k: int, batch_size: int, progress: bool = True,
                  failures: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Correct rollouts out of k, per item, at low and at full resolution (modes `low` and `full`).

    Rollouts that fail to run are counted as wrong and described in `failures`."""
    from tqdm import tqdm

    from visionthink.engines.transformers_engine import Request

    low_counts: list[int] = []
    high_counts: list[int] = []
    per_chunk = max(1, batch_size // k)
    with tqdm(total=2 * k * len(dataset), desc=f"curate k={k}", unit="rollout", disable=not progress) as bar:
        for start in range(0, len(dataset), per_chunk):
            rows = dataset.select(range(start, min(start + per_chunk, len(dataset))))
            images, questions, answers = rows["image"], rows["question"], rows["answer"]
            requests = [Request(image, question) for image, question in zip(images, questions, strict=True)
                        for _ in range(k)]
            for mode, counts in (("low", low_counts), ("full", high_counts)):
                predictions = rollout_answers(engine, requests, mode, failures)
                bar.update(len(requests))
                for i, answer in enumerate(answers):
                    counts.append(sum(is_correct(p, answer) for p in predictions[i * k : (i + 1) * k]))
    return low_counts, high_counts


def rollout_answers(engine, requests: list, mode: str, failures: list[str] | None = None) -> list[str | None]:
    """Final answers of one batch of rollouts. If the batch fails (a sampled turn that cannot be rendered
    again, a broken image), its rollouts are run one by one and those that still fail count as wrong."""
    try:
        return [e.answer for e in engine.run(requests, mode)]
    except (ValueError, VisionThinkError) as error:
        if failures is not None:
            failures.append(f"batch {mode}: {type(error).__name__}: {str(error)[:200]}")
        answers: list[str | None] = []
        for request in requests:
            try:
                answers.append(engine.run([request], mode)[0].answer)
            except (ValueError, VisionThinkError) as error:
                answers.append(None)
                if failures is not None:
                    failures.append(f"rollout {mode}: {type(error).__name__}: {str(error)[:200]}")
        return answers


def save_splits(splits, path: Path) -> None:
    """`splits.save_to_disk(path)`, also when a split is empty (datasets writes it as zero shards and then
    cannot load it back: a good model discards nothing)."""
    splits.save_to_disk(str(path), num_shards={name: 1 for name, rows in splits.items() if len(rows) == 0})


def curate(model: str | None, data: str | Path, out: str | Path, k: int = 8, split: str = "train",
           seed: int = 0, temperature: float = 1.0, limit: int | None = None, batch_size: int = 64,
           progress: bool = True, engine=None, engine_options=None) -> Curation:
    """Label every item, then save the training set (`train`: kept items, `discarded`: the rest) to `out`.

    The rollouts run on `engine`, else on the one `engine_options` (`engines.factory.EngineOptions`) name, else on the
    transformers engine over `model`."""
    from datasets import DatasetDict

    from visionthink.engines.factory import EngineOptions, build_engine
    from visionthink.engines.kv_decoder import SamplingConfig

    if k < 1:
        raise VisionThinkError("--k must be at least 1")
    if temperature <= 0:
        raise VisionThinkError("--temperature must be positive (rollouts are sampled)")
    dataset = load_items(data, split, limit)
    if len(dataset) == 0:
        raise VisionThinkError(f"{data}: split {split!r} has no items")
    if engine is None:
        sampling = SamplingConfig(do_sample=True, temperature=temperature, seed=seed)
        options = engine_options or EngineOptions(model=model)
        engine = build_engine(replace(options, batch_size=batch_size), sampling=sampling)
    failures: list[str] = []
    low, high = count_correct(engine, dataset, k, batch_size, progress, failures)
    labels = [label_item(lo, hi, k) for lo, hi in zip(low, high, strict=True)]
    columns = dataset.column_names
    families = [str(f) for f in dataset["family"]] if "family" in columns else ["all items"] * len(dataset)
    needs = list(dataset["needs_high_res"]) if "needs_high_res" in columns else [None] * len(dataset)
    curation = Curation(k, low, high, labels, families, needs)
    if failures:
        batches = sum(f.startswith("batch") for f in failures)
        curation.notes.append(f"{batches} batch(es) failed and were re-run one rollout at a time; "
                              f"{len(failures) - batches} rollout(s) still failed and count as wrong; "
                              f"first error: {failures[0]}")
    if "needs_high_res" not in columns:
        curation.notes.append("the data has no `needs_high_res` column: the confusion table has no ground truth")
    labelled = dataset.remove_columns([c for c in ADDED_COLUMNS if c in columns])
    labelled = labelled.add_column("label", labels).add_column("low_correct", low)
    labelled = labelled.add_column("high_correct", high).add_column("k", [k] * len(dataset))
    kept = [i for i, label in enumerate(labels) if label != DISCARD]
    dropped = [i for i, label in enumerate(labels) if label == DISCARD]
    path = Path(out)
    save_splits(DatasetDict({"train": labelled.select(kept), "discarded": labelled.select(dropped)}), path)
    report = {**curation.summary(), "data": str(data), "split": split, "seed": seed, "temperature": temperature,
              "model": None if model is None else str(model)}
    (path / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    curation.out = path
    return curation
