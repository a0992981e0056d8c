"""The answer-confidence threshold that spends a token budget (`eval --escalate-budget`).

An escalated answer adds the full-resolution view to what the episode had seen, and nothing else changes, so one run
without escalation tells what each threshold would cost: escalate the least confident direct answers first, as many
as the budget allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Escalation:
    """A threshold and what it costs on the records it was chosen on."""

    threshold: float
    """Escalate first-turn answers with confidence under this (0: none)."""
    escalated: int
    """How many of the records it escalates."""
    token_fraction: float
    """Visual tokens with it, as a fraction of full resolution's."""


def choose_escalation(records: Sequence[dict[str, Any]], budget: float) -> Escalation:
    """The highest threshold whose visual tokens stay within `budget` (a fraction of full resolution's) on `records`
    (a run without escalation: `visual_tokens`, `full_res_visual_tokens`, `answer_confidence`). Thresholds lie
    halfway between neighbouring confidences, so that ties escalate together or not at all."""
    full = sum(r["full_res_visual_tokens"] for r in records)
    if full <= 0:
        raise ValueError("no records with visual tokens to calibrate on")
    spent = sum(r["visual_tokens"] for r in records)
    unsure = sorted((float(r["answer_confidence"]), r["full_res_visual_tokens"]) for r in records
                    if r.get("answer_confidence") is not None and not r.get("escalated"))
    chosen = Escalation(0.0, 0, spent / full)
    index = 0
    while index < len(unsure):
        confidence = unsure[index][0]
        tied = [tokens for c, tokens in unsure[index:] if c == confidence]
        if (spent + sum(tied)) / full > budget:
            break
        spent += sum(tied)
        index += len(tied)
        above = unsure[index][0] if index < len(unsure) else 1.0
        threshold = (confidence + above) / 2 if above > confidence else confidence + 1e-9
        chosen = Escalation(min(threshold, 1.0), index, spent / full)
    return chosen
