"""Score against visual tokens for every tool threshold, from one pass.

Each item runs twice with the path forced at the first-turn decision (`engines.tool_decision`): `ALWAYS` (threshold 0:
the tool) and `NEVER` (threshold inf: the answer). Both record the item's P(tool); between them they hold the
low-view answer and the answer after the tool, with their visual tokens. A threshold T takes the tool on exactly
the items with P(tool) >= T, so every threshold's score and tokens follow without running again. An item whose
decision was not met (no P(tool)) keeps its own episode whatever T is.

Score here is the mean of the per-sample scores (the benchmark's official figure where that is a mean, e.g. synth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALWAYS = "visionthink@T=0"
"""The label of the run that calls the tool at every decision."""
NEVER = "visionthink@T=inf"
"""The label of the run that answers at every decision."""


def threshold_label(mode: str, threshold: float) -> str:
    """The records' mode label of `mode` run with a tool threshold: `visionthink@T=0.35`."""
    return f"{mode}@T={'inf' if threshold == math.inf else f'{threshold:.6g}'}"


@dataclass
class Item:
    """One item's two forced episodes."""

    p_tool: float | None
    answer_score: float
    tool_score: float
    answer_tokens: float
    tool_tokens: float
    full_tokens: float
    needs_high_res: bool | None = None


def items_from(never: Sequence[dict], always: Sequence[dict], needs_high_res: Sequence[bool | None]) -> list[Item]:
    """Items from the two runs' sample records (same items, same order)."""
    items = []
    for answer, tool, needed in zip(never, always, needs_high_res, strict=True):
        p_tool = answer.get("p_tool")
        if p_tool is None:  # no decision: both runs are the item's own episode
            tool = answer
        items.append(Item(None if p_tool is None else float(p_tool), float(answer["score"] or 0.0),
                          float(tool["score"] or 0.0), float(answer["visual_tokens"]), float(tool["visual_tokens"]),
                          float(answer["full_res_visual_tokens"]), needed))
    return items


@dataclass
class Point:
    """The run a threshold makes: its score, visual tokens as a fraction of full resolution, and tool-call share."""

    threshold: float | None
    """None: not a threshold's run (the oracle)."""
    score: float
    token_fraction: float
    tool_ratio: float


def _arrays(items: list[Item]) -> dict[str, np.ndarray]:
    return {
        "p": np.array([-1.0 if i.p_tool is None else i.p_tool for i in items]),
        "decides": np.array([i.p_tool is not None for i in items]),
        "a": np.array([i.answer_score for i in items]), "t": np.array([i.tool_score for i in items]),
        "ta": np.array([i.answer_tokens for i in items]), "tt": np.array([i.tool_tokens for i in items]),
        "full": np.array([i.full_tokens for i in items]),
    }


def point_at(items: list[Item], threshold: float) -> Point:
    """What a run with `threshold` scores and spends."""
    x = _arrays(items)
    tool = x["decides"] & (x["p"] >= threshold)
    return _point(x, tool, threshold)


def _point(x: dict[str, np.ndarray], tool: np.ndarray, threshold: float | None) -> Point:
    score = np.where(tool, x["t"], x["a"]).mean()
    tokens = np.where(tool, x["tt"], x["ta"]).sum() / x["full"].sum()
    return Point(threshold, float(score), float(tokens), float(tool.mean()))


def curve(items: list[Item]) -> list[Point]:
    """Every distinct run a threshold can make, from never calling the tool to always: one point per distinct P(tool)
    (the threshold at that value), then `inf`."""
    if not items:
        return []
    x = _arrays(items)
    values = sorted(set(x["p"][x["decides"]].tolist()), reverse=True)
    points = [_point(x, np.zeros(len(items), dtype=bool), math.inf)]
    points += [_point(x, x["decides"] & (x["p"] >= value), value) for value in values]
    return points


def random_score(items: list[Item], token_fraction: float) -> float:
    """The expected score of calling the tool on random items at the rate that spends `token_fraction`."""
    return _random_line(point_at(items, math.inf), point_at(items, 0.0), token_fraction)


def _random_line(never: Point, always: Point, token_fraction: float) -> float:
    """Random calling's score at `token_fraction`: the line from never calling to always calling."""
    span = always.token_fraction - never.token_fraction
    rate = 0.0 if span <= 0 else min(1.0, max(0.0, (token_fraction - never.token_fraction) / span))
    return never.score + rate * (always.score - never.score)


def margin_over_random(items: list[Item], points: list[Point]) -> float:
    """The least (curve score - random calling's score at the same tokens) over the curve's points."""
    never, always = point_at(items, math.inf), point_at(items, 0.0)
    return min((p.score - _random_line(never, always, p.token_fraction) for p in points), default=0.0)


def oracle_point(items: list[Item]) -> Point | None:
    """Calling the tool on exactly the items that need high resolution (None without the label)."""
    if not items or any(i.needs_high_res is None for i in items):
        return None
    x = _arrays(items)
    return _point(x, np.array([bool(i.needs_high_res) for i in items]) & x["decides"], None)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve of `scores` for `labels` (ties count half); None without both classes."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    start = 0
    for end in range(1, len(s) + 1):  # average ranks over ties
        if end == len(s) or sorted_s[end] != sorted_s[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def choose_threshold(items: list[Item], token_fraction: float) -> Point:
    """The threshold whose run spends closest to `token_fraction` of full resolution's visual tokens (the better
    score among equals)."""
    points = curve(items)
    if not points:
        raise ValueError("no items to calibrate a threshold on")
    return min(points, key=lambda p: (abs(p.token_fraction - token_fraction), -p.score))


def summarise_curve(items: list[Item]) -> dict[str, Any]:
    """The curve, its baselines and how well P(tool) ranks the items, JSON-ready."""
    points = curve(items)
    decided = [i for i in items if i.p_tool is not None]
    labelled = [i for i in decided if i.needs_high_res is not None]
    oracle = oracle_point(items)
    return {
        "n": len(items),
        "decided": len(decided),
        "points": [_jsonable(p) for p in points],
        "never": _jsonable(point_at(items, math.inf)),
        "always": _jsonable(point_at(items, 0.0)),
        "oracle": None if oracle is None else _jsonable(oracle),
        "margin_over_random": margin_over_random(items, points),
        "auroc_needs_high_res": auroc([i.p_tool for i in labelled], [bool(i.needs_high_res) for i in labelled])
        if labelled and len(labelled) == len(decided) else None,
        "auroc_low_wrong_full_right": auroc([i.p_tool for i in decided],
                                            [i.answer_score < i.tool_score for i in decided]),
    }


def _jsonable(point: Point) -> dict[str, Any]:
    """A point for JSON: an infinite threshold as "inf"."""
    return {**asdict(point), "threshold": "inf" if point.threshold == math.inf else point.threshold}


def plot_curves(results: dict[str, dict[str, Any]], path: Path,
                marks: dict[str, dict[str, tuple[float, float]]] | None = None) -> Path:
    """One panel per bench, side by side: score against visual tokens (% of full resolution) for every threshold,
    random calling, the oracle and the bench's `marks` (label -> (token fraction, score), e.g. the greedy run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), sharey=True, squeeze=False)
    for axes, (bench, result) in zip(panels[0], results.items(), strict=True):
        points = sorted(result["points"], key=lambda p: p["token_fraction"])
        axes.plot([100 * p["token_fraction"] for p in points], [100 * p["score"] for p in points], "-", lw=2,
                  label="tool threshold (every T)")
        never, always = result["never"], result["always"]
        axes.plot([100 * never["token_fraction"], 100 * always["token_fraction"]],
                  [100 * never["score"], 100 * always["score"]], "--", color="grey", label="random calls")
        if result.get("oracle"):
            axes.plot(100 * result["oracle"]["token_fraction"], 100 * result["oracle"]["score"], "*", ms=14,
                      color="tab:green", label="oracle")
        for label, (fraction, score) in (marks or {}).get(bench, {}).items():
            axes.plot(100 * fraction, 100 * score, "o", ms=7, label=label)
        axes.set_xlabel("visual tokens, % of full resolution")
        axes.set_title(f"{bench} ({result['n']} items)")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
    panels[0][0].set_ylabel("score %")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
