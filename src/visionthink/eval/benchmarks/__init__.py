"""Benchmark loaders with their official metrics: `BENCHMARKS` (name -> instance) and `get_benchmark`."""

from __future__ import annotations

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.eval.benchmarks.chartqa import ChartQA
from visionthink.eval.benchmarks.docvqa import DocVQA
from visionthink.eval.benchmarks.mathverse import MathVerse
from visionthink.eval.benchmarks.mathvista import MathVista
from visionthink.eval.benchmarks.mme import MME
from visionthink.eval.benchmarks.mmvet import MMVet
from visionthink.eval.benchmarks.ocrbench import OCRBench
from visionthink.eval.benchmarks.pope import POPE
from visionthink.eval.benchmarks.realworldqa import RealWorldQA
from visionthink.eval.benchmarks.synth import (
    Ladder,
    LadderHeldout,
    LadderHeldoutTemplates,
    LadderValidation,
    Synth,
    SynthHeldout,
    SynthHeldoutTemplates,
)

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (ChartQA(), OCRBench(), DocVQA(), MME(), MMVet(), RealWorldQA(), POPE(), MathVista(),
                      MathVerse(), Synth(), SynthHeldout(), SynthHeldoutTemplates(), Ladder(), LadderHeldout(),
                      LadderHeldoutTemplates(), LadderValidation())
}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name` (case, "-" and "_" ignored); raises `VisionThinkError` listing valid names."""
    for benchmark_name, benchmark in BENCHMARKS.items():
        if _key(benchmark_name) == _key(name):
            return benchmark
    raise VisionThinkError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")


__all__ = ["BENCHMARKS", "Benchmark", "Sample", "Scores", "get_benchmark"]
