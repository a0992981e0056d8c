"""The rule judge (grading without a model), and the fallback every LLM judge uses when it cannot grade.

When an LLM judge cannot grade (backend down, timeout, HTTP error, a reply without a score), its
`fallback` decides the verdict: ``"rule"`` grades with `RuleJudge` instead, ``"drop"`` gives score 0.
Either way the verdict has ``ok=False`` and ``error`` set, so a trainer can also drop the rollout group
as the release does (see `visionthink.rewards.rewards.failed_groups`).
"""

from __future__ import annotations

from typing import Literal

from visionthink.grading import grade_answer
from visionthink.grading.rule import ABS_TOL, REL_TOL
from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict

Fallback = Literal["rule", "drop"]
FALLBACKS = ("rule", "drop")


class RuleJudge(Judge):
    """Grades with `visionthink.grading.grade_answer`, the rule eval scores by: numbers by value,
    multiple choice by option, text by normalised match, then math-verify on formulas.

    `Verdict.raw` names the rule that decided ("numeric", "choice", "exact", "math", ...).
    """

    name = "rule"

    def __init__(self, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL, use_math_verify: bool = True):
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.use_math_verify = use_math_verify

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        return [self.grade_one(request) for request in requests]

    def grade_one(self, request: JudgeRequest) -> Verdict:
        """The verdict for one request; never raises."""
        try:
            score, rule = grade_answer(request.truth, request.prediction, request.question, rel_tol=self.rel_tol,
                                       abs_tol=self.abs_tol, use_math=self.use_math_verify)
        except Exception as error:  # noqa: BLE001 - never raise on odd inputs
            return Verdict(0.0, ok=False, raw="error", error=f"rule judge failed: {type(error).__name__}")
        return Verdict(float(score), ok=True, raw=rule)


def check_fallback(fallback: str) -> str:
    """`fallback` when it is one of `FALLBACKS`, else ValueError."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    return fallback


def fallback_verdict(fallback: str, rule: RuleJudge, request: JudgeRequest, error: str,
                     raw: str | None = None) -> Verdict:
    """The ``ok=False`` verdict of a judge that could not grade: the rule grade, or 0 for ``"drop"``."""
    score = rule.grade_one(request).score if fallback == "rule" else 0.0
    return Verdict(score, ok=False, raw=raw, error=error)
