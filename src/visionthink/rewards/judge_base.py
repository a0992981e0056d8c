"""The one interface every accuracy judge implements (rule-based, HTTP, local model)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeRequest:
    """What a judge sees: the question, the ground truth and the final answer text (never the image)."""

    question: str
    truth: str
    prediction: str | None


@dataclass(frozen=True)
class Verdict:
    """A judge's grade. `ok` is False when the judge could not grade (down, timed out, garbage)."""

    score: float
    ok: bool = True
    raw: str | None = None
    error: str | None = None


class Judge(ABC):
    """Grades batches of answers; must never raise on bad predictions or a failing backend."""

    name: str = "judge"

    @abstractmethod
    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order."""
