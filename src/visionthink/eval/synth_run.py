"""`visionthink demo`: the modes run by `eval.runner.run_eval` on the synthetic test items in trained wordings and in
held-out ones, and one table per wording set made from its summary. The plan follows the model: the ladder world
for a model that can zoom (the shipped one), the paper's four modes for a resize-only one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionthink.data.synth import LADDER_FAMILIES
from visionthink.errors import VisionThinkError
from visionthink.eval.runner import SAMPLES_FILE, EvalConfig, run_eval
from visionthink.eval.samples_log import read_samples
from visionthink.eval.summary import time_metrics
from visionthink.modes import PAPER_MODES
from visionthink.profiles import declared_profile


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs on a model: its benches (with their tables' titles) and modes."""

    benches: dict[str, str]
    modes: tuple[str, ...]


LADDER_PLAN = DemoPlan(
    {"ladder": "trained wordings", "ladder-heldout": "held-out wordings (never trained)",
     "ladder-heldout-templates": "held-out sentence structures (never trained)"},
    ("full", "low", "zoom", "oracle-ladder"))
"""A model whose protocol offers `zoom_image` (the shipped ladder model): the ladder world, where the model answers,
zooms or resizes (`zoom` mode), beside full and low resolution and the oracle that takes each item's right action."""
PAPER_PLAN = DemoPlan(
    {"synth": "trained wordings", "synth-heldout": "held-out wordings (never trained)"}, PAPER_MODES)
"""A resize-only model (`visionthink` or `release` protocol): the paper's four modes on the synthetic world."""
ROW_NAMES = {"zoom": "zoom (ladder)"}
"""Table rows named for what the mode does on the ladder model: it answers, zooms or resizes."""


def demo_plan(model: str | None) -> DemoPlan:
    """`LADDER_PLAN` for a model folder that declares a protocol with `zoom_image`, else `PAPER_PLAN`."""
    from visionthink.models.loading import default_model_dir

    return LADDER_PLAN if declared_profile(model or default_model_dir()).offers("zoom_image") else PAPER_PLAN


@dataclass
class DemoResult:
    """Per bench: `{mode: metrics}` from `run_eval`'s summary, and the samples' records (for the batch times); the
    plan that ran and the report."""

    summary: dict[str, dict[str, dict[str, Any]]]
    records: dict[str, list[dict[str, Any]]]
    report: Path
    plan: DemoPlan


def run_demo(out: Path, n: int, model: str | None, batch_size: int, device: str | None = None,
             dtype: str | None = None, progress: bool = True, plan: DemoPlan | None = None) -> DemoResult:
    """The plan's modes (default `demo_plan(model)`) on the first `n` items of each of its benches; the report goes
    to `out` (new or empty)."""
    if any(out.iterdir() if out.is_dir() else ()):
        raise VisionThinkError(f"{out} is not empty; give the demo a new or empty report folder")
    plan = plan or demo_plan(model)
    # data_root is the report folder, which holds no bench folder: the items are always generated
    config = EvalConfig(model=model, benches=list(plan.benches), modes=list(plan.modes), out=out, limit=n,
                        data_root=out, batch_size=batch_size, progress=progress, device=device, dtype=dtype)
    result = run_eval(config, log=_notes_only)
    records: dict[str, list[dict[str, Any]]] = {bench: [] for bench in plan.benches}
    for record in read_samples(out / SAMPLES_FILE):
        records[record["bench"]].append(record)
    return DemoResult({bench: result.summary.get(bench, {}) for bench in plan.benches}, records,
                      result.out / "report.md", plan)


def _notes_only(message: str) -> None:
    """`run_eval`'s log, less the line that it generates the items (the demo's first line says so)."""
    if message.startswith("note:"):
        print(message, file=sys.stderr)


def format_table(modes: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, a row per mode: score per family and overall, visual tokens (and % of full-res), the first
    action per family as zoom / resize shares, the share that took the family's right action (where the items know
    it), samples with no answer (scored wrong), seconds, time per item per family and, where measured (batch size 1),
    per-item p50/p95 (else "-"; see `summary.timing_note`)."""
    first = next(iter(modes.values()))
    families = [f for f in LADDER_FAMILIES if f in first["per_family"]]
    ranked = "action_match" in first
    header = ["mode", *[f"acc {f}" for f in families], "acc all", "visual tokens", "% full-res",
              *[f"zoom/resize {f}" for f in families], *(["right action"] if ranked else []), "no answer",
              "seconds", *[f"s/item {f}" for f in families], "p50 s/item", "p95 s/item"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, metrics in modes.items():
        per_family = metrics["per_family"]
        cells = [ROW_NAMES.get(mode, mode), *[_percent(per_family[f]["score"]) for f in families],
                 _percent(metrics["score"]), f"{metrics['visual_tokens']:.2f}",
                 f"{metrics['visual_tokens_pct_of_full']:.1f}%", *[_actions(per_family[f]) for f in families],
                 *([_percent(metrics["action_match"])] if ranked else []),
                 str(metrics["no_answer"]), f"{metrics['seconds']:.1f}",
                 *[_seconds(per_family[f]["seconds_mean"]) for f in families], _seconds(metrics["seconds_p50"]),
                 _seconds(metrics["seconds_p95"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_line(records: list[dict[str, Any]]) -> str:
    """The timing note over every mode's records of a bench (the batches' wall times pooled)."""
    return time_metrics(records)["timing_note"]


def _actions(family: dict[str, Any]) -> str:
    """The shares of zoom calls and of resizes, e.g. "0% / 100%"."""
    return f"{100 * family.get('zoom_ratio', 0.0):.0f}% / {100 * family['resize_ratio']:.0f}%"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
