"""Curate RL training data by sampled rollouts at each resolution (paper section 3.5).

For every item, k sampled answers at low resolution and k at full resolution are graded:
- "low_res_enough": all k correct at both resolutions;
- "needs_high_res": full resolution correct at least ceil(0.75 k) more times than low resolution
  (6 of 8, as in the paper);
- "discard": anything else (too hard, too noisy, or only a little better at high resolution): the wrong items;
- "cut": the label rests on rollouts whose turn hit the token budget (no stop token). A cut turn is neither right
  nor wrong; when some way of completing the cut rollouts would change the label, the item is set apart in its own
  split instead of being counted wrong (curate again with a larger `--max-new-tokens`).
"""

from __future__ import annotations

import itertools
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
CUT = "cut"
LABELS = (LOW_RES_ENOUGH, NEEDS_HIGH_RES, DISCARD, CUT)
KEPT = (LOW_RES_ENOUGH, NEEDS_HIGH_RES)
ADDED_COLUMNS = ("label", "low_correct", "high_correct", "low_cut", "high_cut", "k")
REQUIRED_COLUMNS = ("image", "question", "answer")
REPORT_FILE = "curation.json"
JUDGE_CACHE_FILE = "judge_cache.jsonl"
SPLITS = {"train": KEPT, "cut": (CUT,), "discarded": (DISCARD,)}
"""The saved splits and the labels each holds."""


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


def label_with_cuts(low_correct: int, high_correct: int, low_cut: int, high_cut: int, k: int) -> str:
    """The label when every way of completing the cut rollouts (each right or wrong) gives the same one, else `cut`."""
    if low_correct + low_cut > k or high_correct + high_cut > k or min(low_cut, high_cut) < 0:
        raise ValueError(f"counts ({low_correct}+{low_cut}, {high_correct}+{high_cut}) outside [0, {k}]")
    labels = {label_item(low_correct + a, high_correct + b, k)
              for a, b in itertools.product(range(low_cut + 1), range(high_cut + 1))}
    return labels.pop() if len(labels) == 1 else CUT


def is_correct(prediction: str | None, truth: Any) -> bool:
    truths = truth if isinstance(truth, (list, tuple)) else [truth]
    return any(exact_match(prediction, str(t)) for t in truths)


@dataclass
class Outcome:
    """One rollout: its final answer and whether its turn hit the token budget."""

    answer: str | None
    cut: bool = False


def turn_was_cut(episode, stop_ids: list[int], budget: int) -> bool:
    """Whether the episode's last turn ended without a stop token: where the engine reports the fed ids
    (transformers), their last one is not a stop token; otherwise (vLLM, remote: the server's usage) the turn
    used its whole budget. Curation's modes write one turn per episode."""
    ids = getattr(episode, "fed_token_ids", None) or []
    if ids and stop_ids:
        return ids[-1] not in stop_ids
    return int(getattr(episode, "generated_tokens", 0) or 0) >= budget


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
    low_cut: list[int] | None = None
    high_cut: list[int] | None = None
    max_new_tokens: int | None = None
    judged_failures: int = 0

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

    def items(self) -> dict[str, int]:
        """Items kept (labelled low_res_enough or needs_high_res), cut (label left open by cut turns) and wrong
        (discarded)."""
        return {"kept": sum(label in KEPT for label in self.labels), "cut": self.labels.count(CUT),
                "wrong": self.labels.count(DISCARD)}

    def rollouts(self) -> dict[str, int]:
        """Rollouts correct, cut (no stop token within the budget) and wrong (finished, not correct)."""
        correct = sum(self.low_correct) + sum(self.high_correct)
        cut = sum(self.low_cut or []) + sum(self.high_cut or [])
        total = 2 * self.k * len(self.labels)
        return {"total": total, "correct": correct, "cut": cut, "wrong": total - correct - cut}

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "high_res_margin": high_res_margin(self.k),
            "max_new_tokens": self.max_new_tokens,
            "items": len(self.labels),
            "kept_cut_wrong": self.items(),
            "rollouts": self.rollouts(),
            "labels": {label: self.labels.count(label) for label in LABELS},
            "confusion": self.confusion(),
            "notes": self.notes,
        }

    def counts_line(self) -> str:
        """One line: kept, cut and wrong items, and the rollouts behind them."""
        items, rollouts = self.items(), self.rollouts()
        budget = f"the {self.max_new_tokens}-token budget" if self.max_new_tokens else "the token budget"
        return (f"items: kept {items['kept']}, cut {items['cut']} (label left open by turns that hit {budget}), "
                f"wrong {items['wrong']} (discarded); rollouts: {rollouts['correct']} correct, {rollouts['cut']} cut, "
                f"{rollouts['wrong']} wrong of {rollouts['total']}")


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


def prepared_image(image, pixel_range: tuple[int, int] | None):
    """The item's image as the views are made from it: loaded safely, then scaled into `pixel_range` (min, max
    pixels; `images.clamp_to_pixel_range`, the release's training images) when one is given."""
    from visionthink.images import clamp_to_pixel_range, load_image

    if pixel_range is None:
        return image
    return clamp_to_pixel_range(load_image(image), *pixel_range)


@dataclass
class Counts:
    """Per item, correct and cut rollouts at low and at full resolution."""

    low_correct: list[int] = field(default_factory=list)
    high_correct: list[int] = field(default_factory=list)
    low_cut: list[int] = field(default_factory=list)
    high_cut: list[int] = field(default_factory=list)
    judge_failures: int = 0


def count_correct(engine, dataset, k: int, batch_size: int, progress: bool = True,
                  failures: list[str] | None = None, judge=None,
                  pixel_range: tuple[int, int] | None = None) -> Counts:
    """Correct and cut rollouts out of k, per item, at low and at full resolution (modes `low` and `full`).

    Finished rollouts are graded by `judge` (a `rewards.Judge`) or, without one, by exact match; cut ones are
    not graded. Rollouts that fail to run are counted as wrong and described in `failures`."""
    from tqdm import tqdm

    from visionthink.engines.transformers_engine import Request

    counts = Counts()
    per_chunk = max(1, batch_size // k)
    with tqdm(total=2 * k * len(dataset), desc=f"curate k={k}", unit="rollout", disable=not progress) as bar:
        for start in range(0, len(dataset), per_chunk):
            rows = dataset.select(range(start, min(start + per_chunk, len(dataset))))
            images, questions, answers = rows["image"], rows["question"], rows["answer"]
            images = [prepared_image(image, pixel_range) for image in images]
            requests = [Request(image, question) for image, question in zip(images, questions, strict=True)
                        for _ in range(k)]
            for mode, correct, cut in (("low", counts.low_correct, counts.low_cut),
                                       ("full", counts.high_correct, counts.high_cut)):
                outcomes = rollout_outcomes(engine, requests, mode, failures)
                bar.update(len(requests))
                grades, failed = grade(outcomes, questions, answers, k, judge)
                counts.judge_failures += failed
                for i in range(len(answers)):
                    mine = outcomes[i * k : (i + 1) * k]
                    correct.append(sum(grades[i * k : (i + 1) * k]))
                    cut.append(sum(o.cut for o in mine))
    return counts


def grade(outcomes: list[Outcome], questions: list[str], answers: list, k: int, judge=None) -> tuple[list[bool], int]:
    """Whether each rollout (k per item, in order) is correct; cut rollouts are not; and how many verdicts the judge
    could not give (its fallback decided them)."""
    if judge is None:
        return [not o.cut and is_correct(o.answer, answers[i // k]) for i, o in enumerate(outcomes)], 0
    from visionthink.rewards.judge_base import JudgeRequest

    asked = [i for i, o in enumerate(outcomes) if not o.cut and o.answer is not None and o.answer.strip()]
    requests = [JudgeRequest(str(questions[i // k]), _truth_text(answers[i // k]), outcomes[i].answer)
                for i in asked]
    verdicts = judge.grade(requests) if requests else []
    grades = [False] * len(outcomes)
    for i, verdict in zip(asked, verdicts, strict=True):
        grades[i] = verdict.score >= 0.5
    return grades, sum(not v.ok for v in verdicts)


def _truth_text(truth: Any) -> str:
    return " | ".join(str(t) for t in truth) if isinstance(truth, (list, tuple)) else str(truth)


def rollout_outcomes(engine, requests: list, mode: str, failures: list[str] | None = None) -> list[Outcome]:
    """Final answers of one batch of rollouts, and which turns were cut. If the batch fails (a sampled turn that
    cannot be rendered again, a broken image), its rollouts are run one by one and those that still fail count as
    wrong."""
    sampling = getattr(engine, "sampling", None)
    budget = getattr(sampling, "max_new_tokens", None) or 0
    stop_ids = list(getattr(engine, "stop_ids", None) or [])

    def outcome(episode) -> Outcome:
        return Outcome(episode.answer, bool(budget) and turn_was_cut(episode, stop_ids, budget))

    try:
        return [outcome(e) for e in engine.run(requests, mode)]
    except (ValueError, VisionThinkError) as error:
        if failures is not None:
            failures.append(f"batch {mode}: {type(error).__name__}: {str(error)[:200]}")
        outcomes: list[Outcome] = []
        for request in requests:
            try:
                outcomes.append(outcome(engine.run([request], mode)[0]))
            except (ValueError, VisionThinkError) as error:
                outcomes.append(Outcome(None))
                if failures is not None:
                    failures.append(f"rollout {mode}: {type(error).__name__}: {str(error)[:200]}")
        return outcomes


def save_splits(splits, path: Path) -> None:
    """`splits.save_to_disk(path)`, also when a split is empty (datasets writes it as zero shards and then
    cannot load it back: a good model discards nothing)."""
    splits.save_to_disk(str(path), num_shards={name: 1 for name, rows in splits.items() if len(rows) == 0})


def _build_judge(judge, out: Path):
    """A `Judge` from a spec (`rewards.judges.make_judge`: rule, http://host/v1#model, local:DIR) behind the curation
    folder's verdict cache; a `Judge` is used as it is; None grades by exact match."""
    if judge is None or not isinstance(judge, str):
        return judge
    from visionthink.rewards.http_judge import HTTPJudge, JudgeUnavailable
    from visionthink.rewards.judge_cache import CachedJudge
    from visionthink.rewards.judges import make_judge

    try:
        inner = make_judge(judge)
        if isinstance(inner, HTTPJudge):
            inner.check()
    except (ValueError, JudgeUnavailable) as error:
        raise VisionThinkError(f"--judge: {error}") from None
    out.mkdir(parents=True, exist_ok=True)
    return CachedJudge(inner, out / JUDGE_CACHE_FILE)


def curate(model: str | None, data: str | Path, out: str | Path, k: int = 8, split: str = "train",
           seed: int = 0, temperature: float = 1.0, limit: int | None = None, batch_size: int = 64,
           progress: bool = True, engine=None, engine_options=None, max_new_tokens: int | None = None,
           judge=None, pixel_range: tuple[int, int] | None = None) -> Curation:
    """Label every item, then save the training set (`train`: kept items, `cut`: items whose label cut turns leave
    open, `discarded`: the wrong ones) to `out`.

    The rollouts run on `engine`, else on the one `engine_options` (`engines.factory.EngineOptions`; its `protocol`
    is the conversation format) name, else on the transformers engine over `model`; `max_new_tokens` is each turn's
    budget (default: the protocol's, `ProtocolProfile.max_new_tokens`). `judge`: a spec as `eval --judge` takes
    (an HTTP judge is asked one question first and must answer), or a `Judge` (default: exact match). `pixel_range`:
    (min, max) pixels every image is scaled into before its views are made (the release's
    `images.RELEASE_MIN_PIXELS`, `RELEASE_MAX_PIXELS`)."""
    from datasets import DatasetDict

    from visionthink.engines.factory import EngineOptions, build_engine
    from visionthink.engines.kv_decoder import SamplingConfig
    from visionthink.profiles import get_profile

    if k < 1:
        raise VisionThinkError("--k must be at least 1")
    if temperature <= 0:
        raise VisionThinkError("--temperature must be positive (rollouts are sampled)")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise VisionThinkError("--max-new-tokens must be at least 1")
    if pixel_range is not None and not 0 < pixel_range[0] <= pixel_range[1]:
        raise VisionThinkError(f"pixel range {pixel_range}: need 0 < min <= max")
    dataset = load_items(data, split, limit)
    if len(dataset) == 0:
        raise VisionThinkError(f"{data}: split {split!r} has no items")
    path = Path(out)
    grader = _build_judge(judge, path)
    if engine is None:
        options = engine_options or EngineOptions(model=model)
        budget = max_new_tokens or get_profile(options.protocol).max_new_tokens
        sampling = SamplingConfig(do_sample=True, temperature=temperature, seed=seed, max_new_tokens=budget)
        engine = build_engine(replace(options, batch_size=batch_size), sampling=sampling)
    budget = getattr(getattr(engine, "sampling", None), "max_new_tokens", None)
    failures: list[str] = []
    counts = count_correct(engine, dataset, k, batch_size, progress, failures, grader, pixel_range)
    low, high = counts.low_correct, counts.high_correct
    labels = [label_with_cuts(lo, hi, lc, hc, k)
              for lo, hi, lc, hc in zip(low, high, counts.low_cut, counts.high_cut, strict=True)]
    columns = dataset.column_names
    families = [str(f) for f in dataset["family"]] if "family" in columns else ["all items"] * len(dataset)
    needs = list(dataset["needs_high_res"]) if "needs_high_res" in columns else [None] * len(dataset)
    curation = Curation(k, low, high, labels, families, needs, low_cut=counts.low_cut, high_cut=counts.high_cut,
                        max_new_tokens=budget, judged_failures=counts.judge_failures)
    if failures:
        batches = sum(f.startswith("batch") for f in failures)
        curation.notes.append(f"{batches} batch(es) failed and were re-run one rollout at a time; "
                              f"{len(failures) - batches} rollout(s) still failed and count as wrong; "
                              f"first error: {failures[0]}")
    if counts.judge_failures:
        curation.notes.append(f"the judge could not grade {counts.judge_failures} rollout(s): its fallback decided "
                              "them")
    if curation.items()["cut"]:
        curation.notes.append(f"{curation.items()['cut']} item(s) saved in the `cut` split: their label rests on "
                              f"turns that hit the {budget}-token budget (curate them again with a larger "
                              "--max-new-tokens)")
    if "needs_high_res" not in columns:
        curation.notes.append("the data has no `needs_high_res` column: the confusion table has no ground truth")
    labelled = dataset.remove_columns([c for c in ADDED_COLUMNS if c in columns])
    for name, values in (("label", labels), ("low_correct", low), ("high_correct", high),
                         ("low_cut", counts.low_cut), ("high_cut", counts.high_cut), ("k", [k] * len(dataset))):
        labelled = labelled.add_column(name, values)
    save_splits(DatasetDict({name: labelled.select([i for i, label in enumerate(labels) if label in held])
                             for name, held in SPLITS.items()}), path)
    report = {**curation.summary(), "data": str(data), "split": split, "seed": seed, "temperature": temperature,
              "model": None if model is None else str(model),
              "protocol": getattr(getattr(engine, "protocol", None), "name", None),
              "judge": judge if isinstance(judge, str) or judge is None else getattr(judge, "name", "judge"),
              "pixel_range": list(pixel_range) if pixel_range else None}
    (path / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    curation.out = path
    return curation
