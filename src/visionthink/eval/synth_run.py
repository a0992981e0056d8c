"""Run modes over synthetic items and summarise accuracy, visual tokens, resize ratio and time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm import tqdm

from visionthink.data.synth import FAMILIES, Item
from visionthink.engines.transformers_engine import Request
from visionthink.grading import exact_match
from visionthink.protocol import Episode


@dataclass
class ModeResult:
    """One mode's figures on a set of items."""

    mode: str
    accuracy: dict[str, float] = field(default_factory=dict)
    resize_ratio: dict[str, float] = field(default_factory=dict)
    visual_tokens: float = 0.0
    full_res_visual_tokens: float = 0.0
    seconds: float = 0.0
    malformed: int = 0
    """Episodes that ended without an answer (`Episode.error` set); they score as wrong."""
    episodes: list[Episode] = field(default_factory=list)

    @property
    def overall_accuracy(self) -> float:
        return self.accuracy.get("all", 0.0)


def run_modes(engine, items: list[Item], modes: list[str], show_progress: bool = True) -> list[ModeResult]:
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    results = []
    for mode in modes:
        began = time.perf_counter()
        with tqdm(total=len(items), desc=mode, disable=not show_progress, leave=False) as bar:
            episodes = engine.run(requests, mode, progress=bar)
        results.append(summarise(mode, items, episodes, time.perf_counter() - began))
    return results


def summarise(mode: str, items: list[Item], episodes: list[Episode], seconds: float) -> ModeResult:
    result = ModeResult(mode=mode, seconds=seconds, episodes=episodes)
    groups = {family: [i for i, item in enumerate(items) if item.family == family] for family in FAMILIES}
    groups["all"] = list(range(len(items)))
    for name, indices in groups.items():
        if not indices:
            continue
        result.accuracy[name] = sum(exact_match(episodes[i].answer, items[i].answer) for i in indices) / len(indices)
        result.resize_ratio[name] = sum(episodes[i].resized for i in indices) / len(indices)
    result.visual_tokens = sum(e.visual_tokens for e in episodes) / len(episodes)
    result.full_res_visual_tokens = sum(e.full_res_visual_tokens for e in episodes) / len(episodes)
    result.malformed = sum(1 for e in episodes if e.error)
    return result


def format_table(results: list[ModeResult]) -> str:
    """A Markdown table: accuracy per family, visual tokens (and % of full-res), resize ratio, episodes without
    an answer ("no answer", counted wrong) and time."""
    families = [f for f in FAMILIES if f in results[0].accuracy]
    header = ["mode", *[f"acc {f}" for f in families], "acc all", "visual tokens", "% full-res",
              *[f"resize {f}" for f in families], "no answer", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.mode, *[f"{100 * r.accuracy[f]:.1f}%" for f in families], f"{100 * r.overall_accuracy:.1f}%",
                 f"{r.visual_tokens:.2f}", f"{100 * r.visual_tokens / r.full_res_visual_tokens:.1f}%",
                 *[f"{100 * r.resize_ratio[f]:.1f}%" for f in families], str(r.malformed), f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
