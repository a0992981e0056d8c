"""What a benchmark is: samples loaded from a local folder, and its official scoring."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionthink.images import ImageSource
from visionthink.rewards.judge_base import Judge


@dataclass
class Sample:
    """One benchmark question. `answer` may list several accepted answers."""

    uid: str
    image: ImageSource
    question: str
    answer: str | list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific fields (category, question type, choices, needs_high_res, family, ...)."""


@dataclass
class Scores:
    """Per-sample scores in [0, 1] and the benchmark's summary; `summary["score"]` is in [0, 1]."""

    per_sample: list[float]
    summary: dict[str, float]


class Benchmark(ABC):
    """A benchmark read from a local folder in its published layout; nothing is downloaded."""

    name: str = ""
    layout: str = ""
    """Human-readable description of the expected folder layout, shown when it is missing."""
    needs_judge: bool = False
    """True when only a judge can score it (MM-Vet): `visionthink eval` then refuses to start without one."""

    @abstractmethod
    def load(self, root: Path, limit: int | None = None) -> list[Sample]:
        """Samples from `root`; raise `visionthink.errors.VisionThinkError` naming `layout` if absent."""

    @abstractmethod
    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        """The official metric over `predictions` (final answer texts, None when the model gave none)."""


def published(dataset: str, files: str, columns: str, tsv: str, tsv_columns: str) -> str:
    """The `layout` of a benchmark read as its Hugging Face dataset or as its VLMEvalKit TSV."""
    return (f"either the Hugging Face dataset {dataset} as published:\n  <root>/{files}  columns: {columns}\n"
            f"or the VLMEvalKit TSV: <root>/{tsv}.tsv (or <root> = that file)\n  columns: {tsv_columns}")
