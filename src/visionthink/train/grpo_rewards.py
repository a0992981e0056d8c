"""The VisionThink reward in TRL's terms: one scoring per batch, read by three reward functions.

`VisionThinkRewards.score_batch` scores a batch once: it rebuilds each rollout's `protocol.Episode`, grades
it (`rewards.grade_episodes`), gathers the graded rollouts of every process and assembles the reward over
whole groups (`rewards.group_rewards`, after `rewards.grade_episodes`). The trainer
(`grpo_trainer`) calls it before TRL's reward loop and passes each row's terms to TRL as input columns
(`BatchScores.columns`); the three reward functions `accuracy`, `format` and `resize_penalty` (weight 1
each, the last one <= 0, named as TRL logs them) only read those columns.

Groups: TRL's sampler puts the `num_generations` rollouts of a prompt next to each other in the global
batch, which is split across processes in order, so rollout k of process p is global row
``p * local + k`` and its group is ``row // num_generations``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from visionthink.profiles import get_profile
from visionthink.protocol import Episode
from visionthink.rewards.rewards import (
    COST_WEIGHT,
    FORMAT_REWARD,
    PENALTY,
    THETA,
    GradedRollout,
    grade_episodes,
    group_rewards,
)
from visionthink.train import grpo_env


@dataclass
class BatchScores:
    """This process's rows of one scored batch."""

    accuracy: list[float]
    format: list[float]
    penalty: list[float]
    """P_control, >= 0 (the reward function `resize_penalty` returns its negative)."""
    keep: list[bool]
    """False for rows of groups left out of the loss (tied, or failed by the judge when so configured)."""
    metrics: dict[str, float]

    def columns(self) -> list[dict[str, float]]:
        """Per row, the reward terms as extra input columns, named as the reward functions' parameters (TRL passes
        columns by keyword, beside its own `prompts`, `completions`, `trainer_state`, ...)."""
        return [{"accuracy_reward": a, "format_reward": f, "resize_penalty_value": p}
                for a, f, p in zip(self.accuracy, self.format, self.penalty, strict=True)]


class VisionThinkRewards:
    """Scores GRPO batches (`score_batch`) and offers the three TRL reward functions (`reward_funcs`)."""

    def __init__(self, processor, judge, num_generations: int, variant: str = "paper", theta: float = THETA,
                 penalty: float = PENALTY, format_value: float = FORMAT_REWARD, drop_tied: bool = True,
                 drop_failed: bool = False, protocol=None, cost_weight: float = COST_WEIGHT):
        self.processor = processor
        self.protocol = protocol
        """The protocol profile the rollouts follow (None: `visionthink`); it parses their turns."""
        self.judge = judge
        self.num_generations = num_generations
        self.variant = variant
        self.theta = theta
        self.penalty = penalty
        self.cost_weight = cost_weight
        """beta of the `cost` variant (read by it only)."""
        self.format_value = format_value
        self.drop_tied = drop_tied
        self.drop_failed = drop_failed
        self.history: list[dict[str, float]] = []
        """Per batch: the metrics logged (kept for tests and the run summary)."""

    # TRL names reward functions after `__name__`: these three names are the logged components.
    @staticmethod
    def accuracy(accuracy_reward: list[float], **_: Any) -> list[float]:
        """R_acc: the judge's 0/1 grade of the final `<answer>`."""
        return accuracy_reward

    @staticmethod
    def format(format_reward: list[float], **_: Any) -> list[float]:
        """R_format: 0.5 when every turn of the episode is well formed (the paper, section 3)."""
        return format_reward

    @staticmethod
    def resize_penalty(resize_penalty_value: list[float], **_: Any) -> list[float]:
        """-P_control: the group resize penalty (variant `paper`, `release`, `none`, `flat` or `cost`)."""
        return [-p for p in resize_penalty_value]

    @property
    def reward_funcs(self) -> list[Callable[..., list[float]]]:
        return [self.accuracy, self.format, self.resize_penalty]

    def score_batch(self, prompts: list, completions: list, completion_ids: list, rows: list[dict[str, Any]],
                    log_metric: Callable[[str, float], None] | None = None) -> BatchScores:
        """Score this process's rows (TRL's batch `inputs`); a collective: every process must call it."""
        from accelerate import PartialState
        from accelerate.utils import gather_object

        highs = [row.get("high_res_image") for row in rows]
        episodes = [
            grpo_env.rollout_episode(self.processor, prompt, completion, ids, high, protocol_profile=self.protocol)
            for prompt, completion, ids, high in zip(prompts, completions, completion_ids, highs, strict=True)
        ]
        questions = [row["question"] for row in rows]
        truths = [row["answer"] for row in rows]
        graded = grade_episodes(episodes, truths, questions, self.judge, self.format_value)
        uids = [row.get("uid", f"{row['question']}\x00{row['answer']}") for row in rows]  # rows without `uid`
        local = list(zip(uids, graded, strict=True))
        state = PartialState()
        everything = gather_object(local) if state.num_processes > 1 else local
        scores = combine_groups(everything, state.process_index, len(rows), self.num_generations, self.variant,
                                self.theta, self.penalty, self.drop_tied, self.drop_failed, self.cost_weight)
        families = [row.get("family", "all") for row in rows]
        zoom = get_profile(self.protocol).offers("zoom_image")
        scores.metrics = {**batch_metrics(episodes, scores, families, graded),
                          **(zoom_metrics(episodes, families) if zoom else {}), **scores.metrics}
        self.history.append(scores.metrics)
        if log_metric is not None:
            for name, value in scores.metrics.items():
                log_metric(name, value)
        return scores


def combine_groups(everything: list[tuple[Hashable, GradedRollout]], process_index: int, n: int,
                   num_generations: int, variant: str = "paper", theta: float = THETA, penalty: float = PENALTY,
                   drop_tied: bool = True, drop_failed: bool = False, cost_weight: float = COST_WEIGHT) -> BatchScores:
    """The scores of this process's `n` rows from the `(uid, graded rollout)` rows of every process, in
    process order. Global row i is in group ``i // num_generations``; the penalty and the tie filter see
    whole groups (`cost_weight`: the `cost` variant's beta). The metrics here are the group counts."""
    groups = [row_index // num_generations for row_index in range(len(everything))]
    _check_groups([uid for uid, _ in everything], groups)
    parts = group_rewards([graded for _, graded in everything], groups, variant, theta, penalty, drop_tied,
                          drop_failed, cost_weight)
    mine = slice(process_index * n, (process_index + 1) * n)
    dropped = {g for g, k in zip(groups, parts.keep, strict=True) if not k}
    return BatchScores(
        accuracy=parts.accuracy[mine], format=parts.format[mine], penalty=parts.penalty[mine], keep=parts.keep[mine],
        metrics={
            "groups/dropped": float(len(dropped)),
            "groups/tied_share": len(parts.tied) / max(1, len(set(groups))),
            "groups/judge_failed": float(len(parts.failed)),
        },
    )


def _check_groups(uids: list[Hashable], groups: list[int]) -> None:
    """Every group must hold rollouts of one question (TRL's sampler guarantees it; check anyway)."""
    seen: dict[int, Hashable] = {}
    for uid, group in zip(uids, groups, strict=True):
        if seen.setdefault(group, uid) != uid:
            raise RuntimeError(f"rollout group {group} mixes questions {seen[group]!r} and {uid!r}; "
                               "per-device batch and generation batch must keep TRL's grouping")


def batch_metrics(episodes: list[Episode], scores: BatchScores, family: list[str],
                  graded: list[GradedRollout]) -> dict[str, float]:
    """This process's batch in numbers: resize ratio (all and per family), accuracy per family, tokens."""
    n = max(1, len(episodes))
    metrics = {
        "resize_ratio": sum(e.resized for e in episodes) / n,
        "well_formed": sum(e.well_formed for e in episodes) / n,
        "visual_tokens/mean": sum(e.visual_tokens for e in episodes) / n,
        "visual_tokens/share_of_full": sum(e.visual_tokens / max(1, e.full_res_visual_tokens) for e in episodes) / n,
        "judge/failures": float(sum(not g.verdict.ok for g in graded)),
        "rows/kept": sum(scores.keep) / n,
    }
    for name in sorted(set(family)):
        rows = [i for i, f in enumerate(family) if f == name]
        metrics[f"resize_ratio/{name}"] = sum(episodes[i].resized for i in rows) / len(rows)
        metrics[f"accuracy/{name}"] = sum(scores.accuracy[i] for i in rows) / len(rows)
    return metrics


def zoom_metrics(episodes: list[Episode], family: list[str]) -> dict[str, float]:
    """Under a zoom profile: the share of zoom calls and of any tool (all and per family), the crop's visual
    tokens per zoom, and the mean `visual_cost` (what the `cost` penalty weighs)."""
    from visionthink.rewards.rewards import visual_cost

    n = max(1, len(episodes))
    zooms = [e for e in episodes if e.zoomed]
    metrics = {
        "zoom_ratio": len(zooms) / n,
        "tool_ratio": sum(e.resized or e.zoomed for e in episodes) / n,
        "visual_cost/mean": sum(visual_cost(e) for e in episodes) / n,
        "zoom/crop_tokens": (sum(e.visual_tokens_per_turn[-1] for e in zooms) / len(zooms)) if zooms else 0.0,
    }
    for name in sorted(set(family)):
        rows = [i for i, f in enumerate(family) if f == name]
        metrics[f"zoom_ratio/{name}"] = sum(episodes[i].zoomed for i in rows) / len(rows)
        metrics[f"tool_ratio/{name}"] = sum(episodes[i].resized or episodes[i].zoomed for i in rows) / len(rows)
    return metrics
