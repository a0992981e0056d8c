"""The eval report: `summary.json`, `run.json`, `report.md` (a table like the paper's Table 2) and plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODE_ORDER = ("full", "low", "visionthink", "oracle")
SCORE_VS_TOKENS_PLOT = "score_vs_visual_tokens.png"
RESIZE_RATIO_PLOT = "resize_ratio.png"

Summary = dict[str, dict[str, dict[str, Any]]]


def modes_in(summary: Summary) -> list[str]:
    """Every mode of the summary, the four standard ones first."""
    found = list(dict.fromkeys(mode for modes in summary.values() for mode in modes))
    return [m for m in MODE_ORDER if m in found] + [m for m in found if m not in MODE_ORDER]


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def mode_by_bench(summary: Summary, modes: list[str], cell: Callable[[dict[str, Any]], str]) -> str:
    """A markdown table with a row per mode of `modes` and a column per bench; `cell(metrics)` writes a cell, "n/a"
    where the bench lacks the mode."""
    benches = list(summary)
    lines = ["| mode | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for mode in modes:
        cells = ["n/a" if mode not in summary[bench] else cell(summary[bench][mode]) for bench in benches]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table2(summary: Summary) -> str:
    """Rows = modes, columns = benches; a cell is the score (in %) and the visual tokens kept (% of full-res)."""

    def cell(metrics: dict[str, Any]) -> str:
        share = metrics.get("visual_tokens_pct_of_full")
        return _pct(metrics["score"]) + ("" if share is None else f" ({share:.0f}% tok)")

    return mode_by_bench(summary, modes_in(summary), cell)


def vs_full_table(summary: Summary) -> str | None:
    """Rows = modes, columns = benches; a cell is the mode's per-item score minus full resolution's on the same
    items, in points, with its standard error (`summary.paired_difference`). None where no bench ran `full`."""
    modes = [m for m in modes_in(summary) if any("vs_full" in summary[b].get(m, {}) for b in summary)]

    def cell(metrics: dict[str, Any]) -> str:
        paired = metrics.get("vs_full")
        return "n/a" if paired is None else f"{100 * paired['difference']:+.1f} ± {100 * paired['standard_error']:.1f}"

    return mode_by_bench(summary, modes, cell) if modes else None


def _figure(official: dict[str, float], key: str, label: str) -> str | None:
    """`label` and the figure in %, or None when the summary lacks it."""
    return f"{label} {100 * official[key]:.1f}" if key in official else None


def _mme_figures(official: dict[str, float]) -> list[str]:
    from visionthink.eval.metrics import mme_category_kind

    kinds = [mme_category_kind(key.removeprefix("points/")) for key in official if key.startswith("points/")]
    parts = []
    for kind, full in (("perception", 2000), ("cognition", 800)):
        if kind in official:
            present = 200 * kinds.count(kind)
            scale = f" (of {present} for the categories run)" if present and present != full else ""
            parts.append(f"{kind} {official[kind]:.1f} / {full}{scale}")
    return parts


def native_figures(bench: str, metrics: dict[str, Any]) -> str:
    """A benchmark's figures on the scale its paper and leaderboards use, from a mode's metrics.

    MME: perception (of 2000) and cognition (of 800) totals. OCRBench: items right of 1,000 (and of
    the items run, when a limit was set). POPE: accuracy, precision, recall, F1 and yes-ratio (%).
    DocVQA: ANLS. ChartQA: relaxed accuracy per split. MM-Vet: the judge's mean score of 100.
    MathVista / MathVerse: accuracy and the rules-only accuracy. Others: accuracy. Judge failures
    are named when there were any.
    """
    official: dict[str, float] = dict(metrics.get("official") or {})
    score = float(metrics.get("score", 0.0))
    n = int(metrics.get("n", 0))
    key = bench.lower().replace("-", "").replace("_", "")
    parts: list[str | None]
    if key == "mme":
        parts = list(_mme_figures(official))
    elif key == "ocrbench":
        right = official.get("final_score", score * n)
        parts = [f"{right:.0f} / 1000" if n == 1000 else
                 f"{right:.0f} right of {n} run (= {1000 * score:.0f} / 1000 scaled)"]
    elif key == "pope":
        parts = [_figure(official, "accuracy", "acc"), _figure(official, "precision", "P"),
                 _figure(official, "recall", "R"), _figure(official, "f1", "F1"),
                 _figure(official, "yes_ratio", "yes-ratio")]
    elif key == "docvqa":
        parts = [_figure(official, "anls", "ANLS")]
    elif key == "chartqa":
        parts = [_figure(official, "relaxed", "relaxed acc")]
        parts += [_figure(official, name, name.removeprefix("score/")) for name in official
                  if name.startswith("score/")]
    elif key == "mmvet":
        parts = [f"score {100 * score:.1f} / 100"]
    elif key in ("mathvista", "mathverse"):
        parts = [f"acc {100 * score:.1f}", _figure(official, "rules", "rules alone")]
    else:
        parts = [f"acc {100 * score:.1f}"]
    if official.get("judge_failures"):
        parts.append(f"judge failures {official['judge_failures']:.0f}")
    return " · ".join(part for part in parts if part) or "-"


def native_table(summary: Summary) -> str:
    """One row per (bench, mode): score, visual tokens kept, and the benchmark's own figures."""
    header = ["bench", "mode", "score %", "% of full-res tokens", "benchmark figures"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bench, modes in summary.items():
        for mode in modes_in({bench: modes}):
            m = modes[mode]
            share = m.get("visual_tokens_pct_of_full")
            cells = [bench, mode, _pct(m["score"]), "-" if share is None else f"{share:.1f}",
                     native_figures(bench, m)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _timing(metrics: dict[str, Any]) -> str:
    return "measured" if metrics.get("timing") == "measured" else "batch shares"


def details_table(summary: Summary) -> str:
    """One row per (bench, mode) with every cost figure (per-item p50/p95 only where measured)."""
    header = ["bench", "mode", "n", "score %", "visual tokens", "% of full-res", "resize %", "seconds",
              "s/item", "per-item times", "p50 s/item", "p95 s/item", "batches", "p50 s/batch", "p95 s/batch",
              "gen tok/s", "resize precision %", "resize recall %", "no answer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bench, modes in summary.items():
        for mode in modes_in({bench: modes}):
            m = modes[mode]
            share = m.get("visual_tokens_pct_of_full")
            cells = [bench, mode, str(m["n"]), _pct(m["score"]), f"{m['visual_tokens']:.2f}",
                     "-" if share is None else f"{share:.1f}", _pct(m["resize_ratio"]), f"{m['seconds']:.2f}",
                     _seconds(m.get("seconds_mean")), _timing(m), _seconds(m.get("seconds_p50")),
                     _seconds(m.get("seconds_p95")), str(m.get("batches", "-")), _seconds(m.get("batch_seconds_p50")),
                     _seconds(m.get("batch_seconds_p95")), f"{m['tokens_per_second']:.1f}",
                     _pct(m.get("resize_precision")), _pct(m.get("resize_recall")), str(m.get("no_answer", 0))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_tables(summary: Summary) -> str:
    """Per-family score and resize ratio, for benches whose samples name a family (the synthetic world)."""
    parts = []
    for bench, modes in summary.items():
        families = list(dict.fromkeys(f for m in modes.values() for f in m.get("per_family", {})))
        if not families:
            continue
        header = ["mode", *[f"score {f}" for f in families], *[f"resize {f}" for f in families]]
        lines = [f"### {bench} per family", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for mode in modes_in({bench: modes}):
            per_family = modes[mode].get("per_family", {})
            scores = [_pct(per_family[f]["score"]) if f in per_family else "-" for f in families]
            ratios = [_pct(per_family[f]["resize_ratio"]) if f in per_family else "-" for f in families]
            lines.append(f"| {mode} | " + " | ".join(scores + ratios) + " |")
        counts = ", ".join(f"{f}: {next(iter(modes.values())).get('per_family', {}).get(f, {}).get('n', 0)}"
                           for f in families)
        lines += ["", f"Items per family: {counts}.", "", family_time_table(bench, modes, families)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def family_time_table(bench: str, modes: dict[str, dict[str, Any]], families: list[str]) -> str:
    """One row per (mode, family): total seconds, mean per item and, where measured, p50/p95 per item."""
    header = ["mode", "family", "n", "per-item times", "seconds", "s/item", "p50 s/item", "p95 s/item"]
    lines = [f"Time per family ({bench}):", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in modes_in({bench: modes}):
        per_family = modes[mode].get("per_family", {})
        for family in families:
            entry = per_family.get(family)
            if entry is None or "seconds" not in entry:
                continue
            cells = [mode, family, str(entry["n"]), _timing(modes[mode]), f"{entry['seconds']:.2f}",
                     _seconds(entry.get("seconds_mean")), _seconds(entry.get("seconds_p50")),
                     _seconds(entry.get("seconds_p95"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_text(summary: Summary) -> str:
    """What the time columns mean for this summary: measured per item, or shares of batches."""
    timings = {m.get("timing") for modes in summary.values() for m in modes.values()}
    parts = ["Seconds: total wall time of the engine calls (image loading included); s/item: that over the items."]
    if "measured" in timings:
        parts.append("Where per-item times are 'measured', every item ran alone (`--batch-size 1`): its wall time "
                     "is its own and p50/p95 are over items.")
    if timings - {"measured"}:
        parts.append("Where they are 'batch shares', items ran in batches: a per-item time is the item's share of "
                     "its batch (each turn's time split evenly over the rows still running), not a measurement, "
                     "so per-item p50/p95 are not given ('-') and p50/p95 are given per batch (wall time of one "
                     "batch) instead; per-family seconds are sums of shares. Run with `--batch-size 1` for "
                     "measured per-item times.")
    return " ".join(parts)


def markdown_report(summary: Summary, notes: list[str], meta: dict[str, Any], plots: list[str]) -> str:
    sections = [
        "# VisionThink evaluation",
        "",
        f"Model: `{meta.get('model') or 'shipped tiny checkpoint'}`; benches: {', '.join(summary) or 'none'}; "
        f"limit: {meta.get('limit')}; greedy decoding.",
        "",
        "## Score and visual tokens kept (like the paper's Table 2)",
        "",
        "Cell: score in %, and in brackets the visual tokens in context as % of the full-resolution mode's.",
        "",
        table2(summary),
        "",
    ]
    paired = vs_full_table(summary)
    if paired:
        sections += ["## Against full resolution, item by item", "",
                     "Cell: the mode's per-item score minus the full-resolution mode's on the same items, in points, "
                     "± its standard error (two standard errors is about a 95% interval).", "", paired, ""]
    sections += [
        "## Cost per bench and mode",
        "",
        timing_text(summary) + " Resize precision/recall are against the items' `needs_high_res` label. "
        "No answer: samples whose final turn gave no answer (malformed), scored as wrong.",
        "",
        details_table(summary),
        "",
        "## Benchmark figures",
        "",
        "Each benchmark on its own scale (MME perception / cognition totals, OCRBench of 1,000, POPE "
        "precision / recall / F1 / yes-ratio, ...), beside the score and the visual tokens kept.",
        "",
        native_table(summary),
    ]
    families = family_tables(summary)
    if families:
        sections += ["", "## Per family", "", families]
    if plots:
        sections += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    if notes:
        sections += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(sections) + "\n"


def plot_score_vs_tokens(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for mode in modes_in(summary):
        points = [(bench, m[mode]) for bench, m in summary.items() if mode in m]
        xs = [p[1].get("visual_tokens_pct_of_full") or 0.0 for p in points]
        ys = [100 * p[1]["score"] for p in points]
        axes.scatter(xs, ys, label=mode, s=40)
        for (bench, _), x, y in zip(points, xs, ys, strict=True):
            axes.annotate(bench, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xlabel("visual tokens in context (% of full resolution)")
    axes.set_ylabel("score (%)")
    axes.set_title("Score vs visual tokens, per mode")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_resize_ratio(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(summary)
    modes = modes_in(summary)
    width = 0.8 / max(1, len(modes))
    figure, axes = plt.subplots(figsize=(max(5.0, 1.2 * len(benches) + 3), 4.0))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(benches))]
        ys = [100 * summary[b][mode]["resize_ratio"] if mode in summary[b] else 0.0 for b in benches]
        axes.bar(xs, ys, width=width, label=mode)
    axes.set_xticks(range(len(benches)), benches)
    axes.set_ylim(0, 105)
    axes.set_ylabel("asked for high resolution (%)")
    axes.set_title("Resize ratio per bench")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(out: Path, summary: Summary, notes: list[str], meta: dict[str, Any]) -> list[str]:
    """Write summary.json, run.json, the plots and report.md into `out`; return the notes (plot failures added)."""
    from visionthink.eval.runner import RUN_FILE, SUMMARY_FILE

    out = Path(out)
    notes = list(notes)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plots = []
    if any(summary.values()):
        try:
            plot_score_vs_tokens(summary, out / SCORE_VS_TOKENS_PLOT)
            plot_resize_ratio(summary, out / RESIZE_RATIO_PLOT)
            plots = [SCORE_VS_TOKENS_PLOT, RESIZE_RATIO_PLOT]
        except ImportError:
            notes.append("plots skipped: matplotlib is not installed (pip install matplotlib)")
    (out / RUN_FILE).write_text(json.dumps({**meta, "notes": notes}, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown_report(summary, notes, meta, plots), encoding="utf-8")
    return notes
