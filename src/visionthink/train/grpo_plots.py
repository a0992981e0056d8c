"""Plots of a GRPO run's log: the resize ratio per family over the steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionthink.data import synth


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window - 1` values before it."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]


def plot_resize_ratio(log_history: list[dict[str, Any]], path: Path, window: int = 25) -> Path | None:
    """Resize ratio per family over the steps (what the penalty should separate), as a PNG.

    Each step sees only a few questions per family, so the curves are moving averages over `window` steps.
    Returns None (and draws nothing) without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name in (*synth.LADDER_FAMILIES, None):
        key = f"resize_ratio/{name}" if name else "resize_ratio"
        points = [(r["step"], float(r[key])) for r in log_history if key in r and "step" in r]
        if points:
            steps = [step for step, _ in points]
            values = [value for _, value in points]
            axes.plot(steps, moving_average(values, window), label=name or "all", linewidth=1.5 if name else 2.5,
                      linestyle="-" if name else "--")
    axes.set_xlabel("step")
    axes.set_ylabel(f"resize ratio ({window}-step mean)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
