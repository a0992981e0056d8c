"""Run modes over synthetic items and summarise accuracy, visual tokens, resize and zoom ratios and time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm import tqdm

from visionthink.data.synth import FAMILIES, Item
from visionthink.engines.base import ZOOM_MODES, Request
from visionthink.eval.summary import percentile
from visionthink.grading import exact_match
from visionthink.protocol import Episode


@dataclass
class ModeResult:
    """One mode's figures on a set of items."""

    mode: str
    accuracy: dict[str, float] = field(default_factory=dict)
    resize_ratio: dict[str, float] = field(default_factory=dict)
    zoom_ratio: dict[str, float] = field(default_factory=dict)
    """Share of items whose episode zoomed (`zoom_image` delivered a crop), per family and "all"."""
    visual_tokens: float = 0.0
    full_res_visual_tokens: float = 0.0
    seconds: float = 0.0
    malformed: int = 0
    """Episodes that ended without an answer (`Episode.error` set); they score as wrong."""
    episodes: list[Episode] = field(default_factory=list)
    measured: bool = False
    """Whether every item ran alone (batch size 1), so that its wall time is its own; else per-item times
    are the episodes' shares of their batch (each turn's time split evenly over the rows still running)."""
    family_seconds: dict[str, float] = field(default_factory=dict)
    """Total time per family (and "all"): measured, or the sum of the items' batch shares."""
    seconds_per_item: dict[str, float] = field(default_factory=dict)
    p50: dict[str, float] = field(default_factory=dict)
    """Per-item p50 per family, only when measured."""
    p95: dict[str, float] = field(default_factory=dict)
    batch_seconds: list[float] = field(default_factory=list)
    """Wall time of each engine batch."""

    @property
    def overall_accuracy(self) -> float:
        return self.accuracy.get("all", 0.0)


def run_modes(engine, items: list[Item], modes: list[str], show_progress: bool = True) -> list[ModeResult]:
    """Each mode over the items, one engine batch at a time, each batch timed. Requests carry the item's label box
    (read only by `oracle-zoom`)."""
    requests = [Request(item.image, item.question, item.needs_high_res, getattr(item, "label_box", None))
                for item in items]
    size = getattr(engine, "batch_size", None)
    size = size if isinstance(size, int) and size >= 1 else max(1, len(items))
    results = []
    for mode in modes:
        episodes: list[Episode] = []
        walls: list[float] = []
        with tqdm(total=len(items), desc=mode, disable=not show_progress, leave=False) as bar:
            for start in range(0, len(requests), size):
                began = time.perf_counter()
                episodes.extend(engine.run(requests[start : start + size], mode, progress=bar))
                walls.append(time.perf_counter() - began)
        results.append(summarise(mode, items, episodes, sum(walls), batch_seconds=walls, batch_size=size))
    return results


def summarise(mode: str, items: list[Item], episodes: list[Episode], seconds: float,
              batch_seconds: list[float] | None = None, batch_size: int | None = None) -> ModeResult:
    """A mode's figures. With `batch_size` 1 and `batch_seconds` (one per item), per-item times are measured;
    otherwise they are the episodes' own accounts (shares of their batch)."""
    batch_seconds = list(batch_seconds or [])
    measured = batch_size == 1 and len(batch_seconds) == len(episodes) > 0
    per_item = batch_seconds if measured else [float(sum(e.seconds.values())) for e in episodes]
    result = ModeResult(mode=mode, seconds=seconds, episodes=episodes, measured=measured,
                        batch_seconds=batch_seconds)
    groups = {family: [i for i, item in enumerate(items) if item.family == family] for family in FAMILIES}
    groups["all"] = list(range(len(items)))
    for name, indices in groups.items():
        if not indices:
            continue
        result.accuracy[name] = sum(exact_match(episodes[i].answer, items[i].answer) for i in indices) / len(indices)
        result.resize_ratio[name] = sum(episodes[i].resized for i in indices) / len(indices)
        result.zoom_ratio[name] = sum(bool(getattr(episodes[i], "zoomed", False)) for i in indices) / len(indices)
        times = [per_item[i] for i in indices]
        result.family_seconds[name] = sum(times)
        result.seconds_per_item[name] = sum(times) / len(times)
        if measured:
            result.p50[name], result.p95[name] = percentile(times, 50), percentile(times, 95)
    result.visual_tokens = sum(e.visual_tokens for e in episodes) / len(episodes)
    result.full_res_visual_tokens = sum(e.full_res_visual_tokens for e in episodes) / len(episodes)
    result.malformed = sum(1 for e in episodes if e.error)
    return result


def format_table(results: list[ModeResult]) -> str:
    """A Markdown table: accuracy per family, visual tokens (and % of full-res), resize ratio, episodes without
    an answer ("no answer", counted wrong), time, time per item per family and, where measured (batch size
    1), per-item p50/p95 (else "-"; see `timing_note`). With a zoom mode among the results, the zoom-call share
    per family follows the resize ratio ("-" for the modes that cannot zoom)."""
    families = [f for f in FAMILIES if f in results[0].accuracy]
    zoom = any(r.mode in ZOOM_MODES for r in results)
    zoom_header = [f"zoom {f}" for f in families] if zoom else []
    header = ["mode", *[f"acc {f}" for f in families], "acc all", "visual tokens", "% full-res",
              *[f"resize {f}" for f in families], *zoom_header, "no answer", "seconds",
              *[f"s/item {f}" for f in families], "p50 s/item", "p95 s/item"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.mode, *[f"{100 * r.accuracy[f]:.1f}%" for f in families], f"{100 * r.overall_accuracy:.1f}%",
                 f"{r.visual_tokens:.2f}", f"{100 * r.visual_tokens / r.full_res_visual_tokens:.1f}%",
                 *[f"{100 * r.resize_ratio[f]:.1f}%" for f in families], *_zoom_cells(r, families, zoom),
                 str(r.malformed), f"{r.seconds:.1f}",
                 *[_item(r.seconds_per_item.get(f)) for f in families], _item(r.p50.get("all")),
                 _item(r.p95.get("all"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _zoom_cells(result: ModeResult, families: list[str], shown: bool) -> list[str]:
    """The zoom-call share per family, when the table shows it ("-" for a mode that cannot zoom)."""
    if not shown:
        return []
    if result.mode not in ZOOM_MODES:
        return ["-"] * len(families)
    return [f"{100 * result.zoom_ratio.get(f, 0.0):.1f}%" for f in families]


def _item(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def timing_note(results: list[ModeResult]) -> str:
    """One line under the table: whether the per-item times were measured or are shares of batches."""
    if results and all(r.measured for r in results):
        return "time per item measured: every item ran alone (batch size 1); p50/p95 are over items"
    walls = [w for r in results for w in r.batch_seconds]
    batch = f"; wall time per batch: p50 {percentile(walls, 50):.3f} s, p95 {percentile(walls, 95):.3f} s" \
        if walls else ""
    return ("time per item: shares of each batch's wall time, not measured per item (no p50/p95; "
            f"--batch-size 1 measures them){batch}")
