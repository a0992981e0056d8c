"""The VisionThink reward, one small function per term: R = R_acc + R_format - P_control.

All functions are pure and order-preserving: output i belongs to input i. Rollouts of the same
question (a GRPO group) share a group id; a group may be scattered anywhere in the lists.

P_control (the resize penalty) comes in four variants (`PENALTY_VARIANTS`), all returned by
`resize_penalties` as amounts to SUBTRACT from each rollout's reward (always >= 0, and only ever
non-zero for a correct rollout):

- ``"paper"`` (default, the paper's Eq. 5): per group, r = C_direct / (C_direct + C_high) over the
  CORRECT rollouts. r < theta: correct direct answers lose `penalty` (resizing is needed here);
  r >= theta: correct resized answers lose `penalty` (low resolution is enough). A group with no
  correct rollout gets nothing.
- ``"release"`` (what the public release does): every correct resized answer's accuracy is scaled
  by ``1 - penalty`` (0.9); when 0 < r < theta, correct direct answers are scaled by it too, so
  below the threshold both actions tie (`release_hits` marks the scaled rollouts);
  `resize_penalties` returns the equivalent subtraction ``R_acc * penalty`` = `penalty` for a
  correct answer (R_acc = 1), so R_acc - P = 0.9 exactly as in the release.
- ``"none"``: no penalty (the paper's ablation: collapses to always resizing).
- ``"flat"``: every correct resized answer loses `penalty` (ablation: collapses to never resizing).

Beyond the paper, for region zoom (docs/zoom.md), ``"cost"`` (`COST_VARIANT`, `cost_penalties`; the GRPO config
accepts it with `cost_weight`): Eq. 5 with any tool call (resize or zoom) counted as "high", plus `cost_weight` times
the correct rollout's visual-token cost above the cheapest correct rollout of its group that Eq. 5 leaves
unpenalised. With `cost_weight` 0 it is Eq. 5 alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from visionthink.protocol import Episode, extract_answer
from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict

PENALTY_VARIANTS = ("paper", "release", "none", "flat")
COST_VARIANT = "cost"
"""The cost-aware group penalty (`cost_penalties`), for the zoom protocol."""
COST_WEIGHT = 0.1
"""beta: penalty per full-resolution image's worth of visual tokens above the group's cheapest approved answer."""
FORMAT_REWARD = 0.5
THETA = 0.2
PENALTY = 0.1

Prediction = Episode | str | None


def _check_lengths(**columns: Sequence) -> int:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


# ---------------------------------------------------------------- accuracy


def prediction_text(prediction: Prediction) -> str | None:
    """The answer text a judge sees: an episode's final answer; for a string, the content of its last
    ``<answer>`` (``\\boxed{}`` unwrapped) when it holds protocol tags, else the string itself."""
    if prediction is None:
        return None
    if isinstance(prediction, Episode):
        return prediction.answer
    text = str(prediction)
    if any(tag in text for tag in ("<answer>", "<think>", "<tool_call>", "\\boxed{")):
        return extract_answer(text)
    text = text.strip()
    return text or None


def judge_verdicts(
    predictions: Sequence[Prediction], truths: Sequence[str], questions: Sequence[str], judge: Judge
) -> list[Verdict]:
    """The judge's verdicts (with `ok` / `error`), one per prediction, in order."""
    _check_lengths(predictions=predictions, truths=truths, questions=questions)
    requests = [
        JudgeRequest(question=str(q), truth=str(t), prediction=prediction_text(p))
        for p, t, q in zip(predictions, truths, questions, strict=True)
    ]
    if not requests:
        return []
    verdicts = judge.grade(requests)
    if len(verdicts) != len(requests):
        raise RuntimeError(f"judge {judge.name!r} returned {len(verdicts)} verdicts for {len(requests)} requests")
    return verdicts


# ---------------------------------------------------------------- format


def format_reward(episode: Episode, value: float = FORMAT_REWARD) -> float:
    """R_format: `value` (0.5) when the episode passes the paper's format check, else 0.

    The check is `Episode.well_formed`: a direct answer is one ``<think>`` block then one
    ``<answer>`` block and no tool call; a resize episode is a turn with one ``<think>`` block then
    exactly one valid ``resize_image`` call, followed by a turn that is a valid direct answer.
    Anything else (a second tool call, a missing think block, extra text) gets 0.
    """
    return value if episode.well_formed else 0.0


def format_rewards(episodes: Sequence[Episode], value: float = FORMAT_REWARD) -> list[float]:
    """`format_reward` for each episode, in order."""
    return [format_reward(episode, value) for episode in episodes]


# ---------------------------------------------------------------- resize penalty


def direct_shares(correct: Sequence[bool], resized: Sequence[bool], group_ids: Sequence[Hashable]) -> dict:
    """r per group: C_direct / (C_direct + C_high) over its correct rollouts; None when none is correct."""
    _check_lengths(correct=correct, resized=resized, group_ids=group_ids)
    direct: dict[Hashable, int] = defaultdict(int)
    total: dict[Hashable, int] = defaultdict(int)
    for ok, big, group in zip(correct, resized, group_ids, strict=True):
        total[group] += 0
        if ok:
            total[group] += 1
            direct[group] += 0 if big else 1
    return {group: (direct[group] / n if n else None) for group, n in total.items()}


def release_hits(
    correct: Sequence[bool], resized: Sequence[bool], group_ids: Sequence[Hashable], theta: float = THETA
) -> list[bool]:
    """Which rollouts the release penalises: every correct resized answer and, in groups where
    0 < r < theta, every correct direct answer too."""
    shares = direct_shares(correct, resized, group_ids)
    hits = []
    for ok, big, group in zip(correct, resized, group_ids, strict=True):
        r = shares[group]
        hits.append(bool(ok) and (bool(big) or (r is not None and 0 < r < theta)))
    return hits


def resize_penalties(
    correct: Sequence[bool],
    resized: Sequence[bool],
    group_ids: Sequence[Hashable],
    variant: str = "paper",
    theta: float = THETA,
    penalty: float = PENALTY,
) -> list[float]:
    """P_control per rollout, as an amount to subtract (>= 0). See the module docstring for the variants.

    ``paper``: groups with r < theta penalise their correct direct answers, groups with r >= theta
    their correct resized answers (r exactly theta counts as >= theta; r = 0 means every correct
    rollout resized, so nothing is penalised). ``release``: `penalty` on every correct resized answer
    and, when 0 < r < theta, on correct direct answers too (`release_hits`; for R_acc = 1 this is
    the release's scaling by ``1 - penalty``). ``flat``: `penalty` on every correct resized
    answer. ``none``: zeros. Incorrect rollouts are never penalised.
    """
    if variant not in PENALTY_VARIANTS:
        raise ValueError(f"variant must be one of {PENALTY_VARIANTS}, got {variant!r}")
    n = _check_lengths(correct=correct, resized=resized, group_ids=group_ids)
    if variant == "none":
        return [0.0] * n
    if variant == "flat":
        return [penalty if ok and big else 0.0 for ok, big in zip(correct, resized, strict=True)]
    if variant == "release":
        return [penalty if hit else 0.0 for hit in release_hits(correct, resized, group_ids, theta)]
    shares = direct_shares(correct, resized, group_ids)
    amounts = []
    for ok, big, group in zip(correct, resized, group_ids, strict=True):
        r = shares[group]
        if not ok or r is None:
            amounts.append(0.0)
        elif r < theta:
            amounts.append(0.0 if big else penalty)
        else:
            amounts.append(penalty if big else 0.0)
    return amounts


def visual_cost(episode: Episode) -> float:
    """c: the episode's visual tokens in context at the end, in units of the image's full-resolution tokens
    (0.25 a direct low-res answer, 1.25 after a resize, 0.25 + crop / full after a zoom)."""
    full = episode.full_res_visual_tokens
    return episode.visual_tokens / full if full else 0.0


def cost_penalties(
    correct: Sequence[bool],
    tool: Sequence[bool],
    costs: Sequence[float],
    group_ids: Sequence[Hashable],
    theta: float = THETA,
    penalty: float = PENALTY,
    cost_weight: float = COST_WEIGHT,
) -> list[float]:
    """The cost-aware group penalty, as amounts to subtract (>= 0; zero for incorrect rollouts).

    P_i = E_i + K_i, where
    E_i = Eq. 5 with `tool[i]` (any tool call: resize or zoom) as "high": `resize_penalties(variant="paper")`;
    K_i = cost_weight * max(0, c_i - c*_g) for a correct rollout, c_i = `costs[i]` (`visual_cost`) and c*_g the
          smallest cost among the correct rollouts of its group with E = 0 (none: K = 0).
    So a correct answer pays for visual tokens only above a cheaper correct answer that the same group reached
    and Eq. 5 approves: a lucky cheap guess in a group that needs high resolution sets no reference, and a group
    whose only correct answers resized pays nothing for them.
    """
    _check_lengths(correct=correct, tool=tool, costs=costs, group_ids=group_ids)
    if cost_weight < 0 or not math.isfinite(cost_weight):
        raise ValueError(f"cost_weight must be a finite number >= 0, got {cost_weight}")
    values = [float(c) for c in costs]
    if any(not math.isfinite(c) or c < 0 for c in values):
        raise ValueError("costs must be finite and >= 0")
    base = resize_penalties(correct, tool, group_ids, variant="paper", theta=theta, penalty=penalty)
    reference: dict[Hashable, float] = {}
    for ok, cost, amount, group in zip(correct, values, base, group_ids, strict=True):
        if ok and amount == 0.0:
            reference[group] = min(reference.get(group, math.inf), cost)
    return [amount + (cost_weight * max(0.0, cost - reference[group]) if ok and group in reference else 0.0)
            for ok, cost, amount, group in zip(correct, values, base, group_ids, strict=True)]


# ---------------------------------------------------------------- total


@dataclass(frozen=True)
class RewardBreakdown:
    """Per-rollout rewards and their parts: ``total[i] = accuracy[i] + format[i] - penalty[i]``."""

    total: list[float]
    accuracy: list[float]
    format: list[float]
    penalty: list[float]
    correct: list[bool]


def total_rewards(
    accuracy: Sequence[float],
    format_scores: Sequence[float],
    resized: Sequence[bool],
    group_ids: Sequence[Hashable],
    variant: str = "paper",
    theta: float = THETA,
    penalty: float = PENALTY,
    correct_threshold: float = 0.5,
    costs: Sequence[float] | None = None,
    cost_weight: float = COST_WEIGHT,
) -> RewardBreakdown:
    """R = R_acc + R_format - P_control for each rollout, with the components.

    ``cost`` (`COST_VARIANT`): `resized` means any tool call and `costs` (`visual_cost`) are required; see
    `cost_penalties`.

    A rollout counts as correct for the penalty when R_acc >= `correct_threshold` (judges give 0 or 1).
    For ``release`` the penalty is ``R_acc * penalty`` where `release_hits`, so R_acc - P equals the
    release's ``R_acc * (1 - penalty)``; for the other variants it is `resize_penalties` as is.
    """
    _check_lengths(accuracy=accuracy, format_scores=format_scores, resized=resized, group_ids=group_ids)
    acc = [float(a) for a in accuracy]
    fmt = [float(f) for f in format_scores]
    correct = [a >= correct_threshold for a in acc]
    if variant == COST_VARIANT:
        if costs is None:
            raise ValueError("the cost variant needs `costs` (visual tokens per rollout in units of full resolution)")
        pen = cost_penalties(correct, resized, costs, group_ids, theta, penalty, cost_weight)
    elif variant == "release":
        hits = release_hits(correct, resized, group_ids, theta)
        pen = [a * penalty if hit else 0.0 for a, hit in zip(acc, hits, strict=True)]
    else:
        pen = resize_penalties(correct, resized, group_ids, variant=variant, theta=theta, penalty=penalty)
    total = [a + f - p for a, f, p in zip(acc, fmt, pen, strict=True)]
    return RewardBreakdown(total=total, accuracy=acc, format=fmt, penalty=pen, correct=correct)


# ---------------------------------------------------------------- group filtering


def tied_groups(rewards: Sequence[float], group_ids: Sequence[Hashable], atol: float = 1e-9) -> set:
    """Groups whose rewards all tie (max - min <= atol): zero GRPO advantage, no learning signal.

    A group of one rollout always ties.
    """
    _check_lengths(rewards=rewards, group_ids=group_ids)
    low: dict[Hashable, float] = {}
    high: dict[Hashable, float] = {}
    for reward, group in zip(rewards, group_ids, strict=True):
        low[group] = min(low.get(group, math.inf), reward)
        high[group] = max(high.get(group, -math.inf), reward)
    return {group for group in low if high[group] - low[group] <= atol}


def failed_groups(verdicts_ok: Iterable[bool], group_ids: Sequence[Hashable]) -> set:
    """Groups with at least one rollout the judge failed to grade (the release drops such groups)."""
    return {group for ok, group in zip(verdicts_ok, group_ids, strict=True) if not ok}


def filter_tied_groups(
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    drop_tied: bool = True,
    also_drop: Iterable[Hashable] = (),
    atol: float = 1e-9,
) -> list[int]:
    """Indices of the rollouts to KEEP, in order: all but those of tied groups (when `drop_tied`)
    and of the groups in `also_drop` (for example `failed_groups`)."""
    dropped = set(also_drop)
    if drop_tied:
        dropped |= tied_groups(rewards, group_ids, atol=atol)
    else:
        _check_lengths(rewards=rewards, group_ids=group_ids)
    return [i for i, group in enumerate(group_ids) if group not in dropped]


# ---------------------------------------------------------------- assembly: the reward of a batch


@dataclass(frozen=True)
class GradedRollout:
    """One rollout graded on its own (judge and format): all the group step needs from it."""

    verdict: Verdict
    format: float
    resized: bool
    cost: float | None = None
    """`visual_cost` of the episode (the `cost` variant reads it)."""
    tool: bool | None = None
    """Whether the episode called any tool that ran (resize or zoom; the `cost` variant's "high")."""


def grade_episodes(
    episodes: Sequence[Episode],
    truths: Sequence[str],
    questions: Sequence[str],
    judge: Judge,
    format_value: float = FORMAT_REWARD,
) -> list[GradedRollout]:
    """The per-rollout half of the reward: the judge's verdict and R_format, in order."""
    _check_lengths(episodes=episodes, truths=truths, questions=questions)
    verdicts = judge_verdicts(episodes, truths, questions, judge)
    formats = format_rewards(episodes, format_value)
    return [GradedRollout(v, f, bool(e.resized), cost=_cost_of(e), tool=bool(e.resized or getattr(e, "zoomed", False)))
            for v, f, e in zip(verdicts, formats, episodes, strict=True)]


def _cost_of(episode) -> float | None:
    """`visual_cost`, or None for an object without token counts (the `cost` variant then refuses the batch)."""
    try:
        return visual_cost(episode)
    except (AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class EpisodeRewards(RewardBreakdown):
    """`RewardBreakdown` plus the judge's verdicts and the rows left in the loss."""

    verdicts: list[Verdict]
    keep: list[bool]
    """False for the rows of dropped groups: tied (with `drop_tied`), failed by the judge (with `drop_failed`)."""
    tied: set
    failed: set


def group_rewards(
    graded: Sequence[GradedRollout],
    group_ids: Sequence[Hashable],
    variant: str = "paper",
    theta: float = THETA,
    penalty: float = PENALTY,
    drop_tied: bool = True,
    drop_failed: bool = False,
    cost_weight: float = COST_WEIGHT,
) -> EpisodeRewards:
    """The group half of the reward: R = R_acc + R_format - P_control over whole groups, and the rows kept.
    (`cost_weight` is read by the `cost` variant only.)"""
    _check_lengths(graded=graded, group_ids=group_ids)
    cost = variant == COST_VARIANT
    if cost and any(g.cost is None for g in graded):
        raise ValueError("the cost variant needs every rollout's `cost` (grade_episodes fills it)")
    parts = total_rewards(
        [float(g.verdict.score) for g in graded],
        [g.format for g in graded],
        [(g.resized if g.tool is None else g.tool) if cost else g.resized for g in graded],
        group_ids,
        variant=variant,
        theta=theta,
        penalty=penalty,
        costs=[g.cost for g in graded] if cost else None,
        cost_weight=cost_weight,
    )
    tied = tied_groups(parts.total, group_ids)
    failed = failed_groups([g.verdict.ok for g in graded], group_ids)
    kept = set(filter_tied_groups(parts.total, group_ids, drop_tied, also_drop=failed if drop_failed else ()))
    return EpisodeRewards(**vars(parts), verdicts=[g.verdict for g in graded],
                          keep=[i in kept for i in range(len(graded))], tied=tied, failed=failed)
