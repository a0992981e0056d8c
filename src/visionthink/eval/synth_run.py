"""`visionthink demo`: the modes run by `eval.runner.run_eval` on the synthetic test items in trained and in
held-out wordings, and one table per wording set made from its summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionthink.data.synth import FAMILIES
from visionthink.errors import VisionThinkError
from visionthink.eval.runner import SAMPLES_FILE, EvalConfig, run_eval
from visionthink.eval.samples_log import read_samples
from visionthink.eval.summary import time_metrics
from visionthink.modes import MODES, PAPER_MODES
from visionthink.profiles import VISIONTHINK_ZOOM

BENCH_TITLES = {"synth": "train wordings", "synth-heldout": "held-out wordings (never trained)"}
"""The demo's two benches, the same items and images asked in each question wording set, and their tables' titles."""
MODEL_FOLDER, ZOOM_MODEL_FOLDER = "model", "zoom-model"
"""The report folders (under the demo's) of the model's modes and of the zoom model's."""
ZOOM_MODES = tuple(name for name, mode in MODES.items() if "zoom_image" in mode.tools)
"""The modes of the zoom rows, run on the zoom model."""
ZOOM_PROTOCOL = VISIONTHINK_ZOOM.name
"""The zoom rows' conversation format, whatever the zoom model's folder declares."""


@dataclass
class DemoResult:
    """Per bench: `{mode: metrics}` from `run_eval`'s summaries, and the samples' records (for the batch times);
    the report folders."""

    summary: dict[str, dict[str, dict[str, Any]]]
    records: dict[str, list[dict[str, Any]]]
    reports: list[Path]


def run_demo(out: Path, n: int, model: str | None, zoom_model: str | None, batch_size: int,
             device: str | None = None, dtype: str | None = None, progress: bool = True) -> DemoResult:
    """`PAPER_MODES` on `model` and, with a `zoom_model`, `ZOOM_MODES` on it under `ZOOM_PROTOCOL`, over the first `n`
    items of each bench; each model's report goes to a folder of its own under `out` (new or empty)."""
    if any(out.iterdir() if out.is_dir() else ()):
        raise VisionThinkError(f"{out} is not empty; give the demo a new or empty report folder")
    runs = [(model, PAPER_MODES, None, MODEL_FOLDER)]
    if zoom_model:
        runs.append((zoom_model, ZOOM_MODES, ZOOM_PROTOCOL, ZOOM_MODEL_FOLDER))
    summary: dict[str, dict[str, dict[str, Any]]] = {bench: {} for bench in BENCH_TITLES}
    records: dict[str, list[dict[str, Any]]] = {bench: [] for bench in BENCH_TITLES}
    reports = []
    for run_model, modes, protocol, folder in runs:
        # data_root is the report folder, which holds no bench folder: the items are always generated
        config = EvalConfig(model=run_model, benches=list(BENCH_TITLES), modes=list(modes), out=out / folder,
                            limit=n, data_root=out / folder, batch_size=batch_size, progress=progress, device=device,
                            dtype=dtype, protocol=protocol)
        result = run_eval(config, log=_notes_only)
        reports.append(result.out / "report.md")
        for bench in BENCH_TITLES:
            summary[bench].update(result.summary.get(bench, {}))
        for record in read_samples(out / folder / SAMPLES_FILE):
            records[record["bench"]].append(record)
    return DemoResult(summary, records, reports)


def _notes_only(message: str) -> None:
    """`run_eval`'s log, less the line that it generates the items (the demo's first line says so)."""
    if message.startswith("note:"):
        print(message, file=sys.stderr)


def format_table(modes: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, a row per mode: score per family and overall, visual tokens (and % of full-res), resize
    ratio per family, then (when a zoom mode is among them) the zoom-call share per family ("-" for the modes that
    cannot zoom), samples with no answer (scored wrong), seconds, time per item per family and, where measured
    (batch size 1), per-item p50/p95 (else "-"; see `summary.timing_note`)."""
    first = next(iter(modes.values()))
    families = [f for f in FAMILIES if f in first["per_family"]]
    zoom = any(mode in ZOOM_MODES for mode in modes)
    header = ["mode", *[f"acc {f}" for f in families], "acc all", "visual tokens", "% full-res",
              *[f"resize {f}" for f in families], *([f"zoom {f}" for f in families] if zoom else []), "no answer",
              "seconds", *[f"s/item {f}" for f in families], "p50 s/item", "p95 s/item"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, metrics in modes.items():
        per_family = metrics["per_family"]
        cells = [mode, *[_percent(per_family[f]["score"]) for f in families], _percent(metrics["score"]),
                 f"{metrics['visual_tokens']:.2f}", f"{metrics['visual_tokens_pct_of_full']:.1f}%",
                 *[_percent(per_family[f]["resize_ratio"]) for f in families],
                 *(_zoom_cells(mode, per_family, families) if zoom else []),
                 str(metrics["no_answer"]), f"{metrics['seconds']:.1f}",
                 *[_seconds(per_family[f]["seconds_mean"]) for f in families], _seconds(metrics["seconds_p50"]),
                 _seconds(metrics["seconds_p95"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_line(records: list[dict[str, Any]]) -> str:
    """The timing note over every mode's records of a bench (the batches' wall times pooled)."""
    return time_metrics(records)["timing_note"]


def _zoom_cells(mode: str, per_family: dict[str, dict[str, Any]], families: list[str]) -> list[str]:
    """The zoom-call share per family ("-" for a mode that cannot zoom; 0% for a zoom mode that never did)."""
    if mode not in ZOOM_MODES:
        return ["-"] * len(families)
    return [_percent(per_family[f].get("zoom_ratio", 0.0)) for f in families]


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
