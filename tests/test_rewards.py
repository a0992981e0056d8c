"""Tests for `visionthink.rewards.rewards`: hand-computed penalties for every variant, format, totals, groups."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionthink.profiles import VISIONTHINK
from visionthink.protocol import Episode, answer_text, parse_turn
from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict
from visionthink.rewards.judges import RuleJudge
from visionthink.rewards.rewards import (
    PENALTY_VARIANTS,
    direct_shares,
    failed_groups,
    filter_tied_groups,
    format_reward,
    format_rewards,
    grade_episodes,
    group_rewards,
    judge_verdicts,
    prediction_text,
    release_hits,
    resize_penalties,
    tied_groups,
    total_rewards,
)
from visionthink.tools import ToolCall

T, F = True, False


def episode(*turn_texts: str, resized: bool | None = None) -> Episode:
    turns = [parse_turn(text) for text in turn_texts]
    if resized is None:
        resized = any(turn.kind == "resize" for turn in turns)
    answer = turns[-1].answer if turns else None
    return Episode(
        messages=[], answer=answer, turns=turns, calls=[RESIZE_CALL] if resized else [],
        visual_tokens_per_turn=[4, 16] if resized else [4], full_res_visual_tokens=16,
    )


RESIZE_CALL = ToolCall("resize_image", {"action": "resize"})
DIRECT = answer_text("the square is red", "red")
RESIZE = VISIONTHINK.call_text("too small to read", "resize_image", {"action": "resize"})


def penalties(correct, resized, groups, variant, **kw):
    return resize_penalties(list(correct), list(resized), list(groups), variant=variant, **kw)


# ---------------------------------------------------------------- the share r


def test_direct_shares_count_only_correct_rollouts():
    correct = [T, T, F, F, T, F]
    resized = [F, T, F, T, T, F]
    groups = ["a", "a", "a", "a", "b", "c"]
    assert direct_shares(correct, resized, groups) == {"a": 0.5, "b": 0.0, "c": None}


# ---------------------------------------------------------------- the variants on hand-made groups

# r = 1/6 < 0.2: six correct rollouts, one direct -> the correct direct answer is penalised.
BELOW = ([T, T, T, T, T, T, F], [F, T, T, T, T, T, F])
# r = 1/5 == 0.2 exactly: penalise the correct resized answers.
AT = ([T, T, T, T, T, F], [F, T, T, T, T, T])
# r = 0: every correct rollout resized (direct answers were all wrong).
ZERO = ([T, T, F, F], [T, T, F, F])
# every rollout resized, half correct.
ALL_RESIZED = ([T, F, T, F], [T, T, T, T])
# nobody correct.
NONE_CORRECT = ([F, F, F, F], [F, T, F, T])
# r = 1: all correct answers direct, the resized ones wrong.
ALL_DIRECT = ([T, T, F], [F, F, T])
# r = 2/3 with a wrong direct answer.
MOSTLY_DIRECT = ([T, T, T, F], [F, F, T, F])


@pytest.mark.parametrize(
    ("case", "paper", "release", "flat"),
    [
        # 0 < r < 0.2: `paper` hits the correct direct answer, `release` direct AND resized correct answers (-> 0.9)
        (BELOW, [0.1, 0, 0, 0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0], [0, 0.1, 0.1, 0.1, 0.1, 0.1, 0]),
        (AT, [0, 0.1, 0.1, 0.1, 0.1, 0], [0, 0.1, 0.1, 0.1, 0.1, 0], [0, 0.1, 0.1, 0.1, 0.1, 0]),  # r = 0.2
        (ZERO, [0, 0, 0, 0], [0.1, 0.1, 0, 0], [0.1, 0.1, 0, 0]),  # r = 0 is not in (0, 0.2) for `release`
        (ALL_RESIZED, [0, 0, 0, 0], [0.1, 0, 0.1, 0], [0.1, 0, 0.1, 0]),
        (NONE_CORRECT, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
        (ALL_DIRECT, [0, 0, 0], [0, 0, 0], [0, 0, 0]),
        (MOSTLY_DIRECT, [0, 0, 0.1, 0], [0, 0, 0.1, 0], [0, 0, 0.1, 0]),
    ],
    ids=["r=1/6", "r=theta", "r=0", "all-resized", "none-correct", "r=1", "r=2/3"],
)
def test_penalty_variants_hand_computed(case, paper, release, flat):
    """Every variant on the same groups: `paper` (Eq. 5), `release`, `flat` (every correct resized answer), `none`."""
    correct, resized = case
    groups = ["q"] * len(correct)
    assert penalties(correct, resized, groups, "paper") == pytest.approx(paper)
    assert penalties(correct, resized, groups, "release") == pytest.approx(release)
    assert release_hits(correct, resized, groups) == [bool(p) for p in release]
    assert penalties(correct, resized, groups, "flat") == pytest.approx(flat)
    assert penalties(correct, resized, groups, "none") == [0.0] * len(correct)


# ---------------------------------------------------------------- paper (Eq. 5)


def test_paper_penalty_custom_theta_and_amount():
    # r = 1/3: below theta = 0.5 -> the correct direct answer loses 0.25.
    got = penalties([T, T, T, F], [F, T, T, F], "gggg", "paper", theta=0.5, penalty=0.25)
    assert got == [0.25, 0, 0, 0]
    # same group with theta = 1/3 exactly -> r >= theta -> the correct resized answers lose 0.25.
    got = penalties([T, T, T, F], [F, T, T, F], "gggg", "paper", theta=1 / 3, penalty=0.25)
    assert got == [0, 0.25, 0.25, 0]


def test_paper_penalty_interleaved_groups_match_separate_groups():
    # group "x" is BELOW (r = 1/6), group "y" is AT (r = 0.2), group 7 is ZERO; positions interleaved.
    cases = {"x": BELOW, "y": AT, 7: ZERO}
    expected_by_group = {"x": [0.1, 0, 0, 0, 0, 0, 0], "y": [0, 0.1, 0.1, 0.1, 0.1, 0], 7: [0, 0, 0, 0]}
    order = ["x", "y", 7, "y", "x", "x", 7, "y", "x", "y", "x", 7, "y", "x", 7, "y", "x"]
    cursor = {g: 0 for g in cases}
    correct, resized, expected = [], [], []
    for group in order:
        i = cursor[group]
        cursor[group] += 1
        correct.append(cases[group][0][i])
        resized.append(cases[group][1][i])
        expected.append(expected_by_group[group][i])
    assert all(cursor[g] == len(cases[g][0]) for g in cases)
    assert penalties(correct, resized, order, "paper") == pytest.approx(expected)


# ---------------------------------------------------------------- release


def test_release_ties_below_threshold_and_matches_scaling():
    correct, resized = BELOW
    groups = ["q"] * len(correct)
    parts = total_rewards([1.0 if c else 0.0 for c in correct], [0.0] * len(correct), resized, groups, "release")
    # R_acc - P is exactly the release's 0.9 * R_acc: both actions tie at 0.9.
    assert parts.total[:6] == pytest.approx([0.9] * 6)
    assert parts.total[6] == 0.0


def test_release_with_a_non_default_theta_and_penalty():
    # one group, r = C_direct / C_correct = 1/3
    correct, resized, groups = [T, T, T, F], [F, T, T, F], ["g"] * 4
    # default theta 0.2: r >= theta, only the correct resized answers are hit
    assert release_hits(correct, resized, groups) == [F, T, T, F]
    # theta 0.5: 0 < r < theta, the correct direct answer is hit too
    assert release_hits(correct, resized, groups, theta=0.5) == [T, T, T, F]
    # theta exactly r: not below it
    assert release_hits(correct, resized, groups, theta=1 / 3) == [F, T, T, F]
    assert penalties(correct, resized, groups, "release", theta=0.5, penalty=0.25) == pytest.approx([0.25] * 3 + [0])
    assert penalties(correct, resized, groups, "release", theta=0.3, penalty=0.25) == pytest.approx([0, 0.25, 0.25, 0])
    assert release_hits(correct, resized, groups, theta=0.3) == [F, T, T, F]
    parts = total_rewards([1.0, 1.0, 1.0, 0.0], [0.5] * 4, resized, groups, "release", theta=0.5, penalty=0.25)
    assert parts.penalty == pytest.approx([0.25, 0.25, 0.25, 0.0])
    assert parts.total == pytest.approx([1.25, 1.25, 1.25, 0.5])  # 1 x (1 - 0.25) + 0.5
    default = total_rewards([1.0, 1.0, 1.0, 0.0], [0.5] * 4, resized, groups, "release", penalty=0.25)
    assert default.total == pytest.approx([1.5, 1.25, 1.25, 0.5])


# ---------------------------------------------------------------- any variant


def test_penalty_rejects_bad_input():
    with pytest.raises(ValueError, match="variant"):
        resize_penalties([T], [T], ["a"], variant="paper-ish")
    with pytest.raises(ValueError, match="length"):
        resize_penalties([T, F], [T], ["a", "a"])
    assert resize_penalties([], [], []) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), max_size=24),
    st.sampled_from(PENALTY_VARIANTS),
    st.randoms(use_true_random=False),
)
def test_penalties_are_order_preserving_and_only_for_correct(rows, variant, rnd):
    correct = [r[0] for r in rows]
    resized = [r[1] for r in rows]
    groups = [r[2] for r in rows]
    base = resize_penalties(correct, resized, groups, variant=variant)
    assert all(p == 0 for p, ok in zip(base, correct, strict=True) if not ok)
    assert all(p in (0.0, 0.1) for p in base)
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    shuffled = resize_penalties(
        [correct[i] for i in perm], [resized[i] for i in perm], [groups[i] for i in perm], variant=variant
    )
    assert shuffled == [base[i] for i in perm]


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("ep", "expected"),
    [
        (episode(DIRECT), 0.5),
        (episode(RESIZE, DIRECT), 0.5),
        (episode(answer_text("", "3")), 0.5),
        (episode("<answer>red</answer>"), 0.0),  # no think block
        (episode("<think>a</think><think>b</think><answer>red</answer>"), 0.0),  # two think blocks
        (episode(DIRECT + "\nextra words"), 0.0),  # text after the answer
        (episode("<think>x</think><answer>red</answer><answer>blue</answer>"), 0.0),  # two answers
        (episode(RESIZE, RESIZE, resized=True), 0.0),  # a second tool call ends the episode
        (episode(RESIZE + "\n<answer>red</answer>", DIRECT, resized=True), 0.0),  # answer tag in the call turn
        (episode(RESIZE, "<answer>red</answer>"), 0.0),  # last turn malformed
        (episode(DIRECT, resized=True), 0.0),  # flagged resized, but no call
        (episode(RESIZE, DIRECT, resized=False), 0.0),  # a call, but not flagged resized
        (episode(RESIZE), 0.0),  # never answered
        (episode(resized=False), 0.0),  # no turns at all
    ],
)
def test_format_reward_on_constructed_episodes(ep, expected):
    assert format_reward(ep) == expected
    assert ep.well_formed is (expected == 0.5)


def test_format_rewards_batch_and_value():
    eps = [episode(DIRECT), episode("<answer>x</answer>"), episode(RESIZE, DIRECT)]
    assert format_rewards(eps) == [0.5, 0.0, 0.5]
    assert format_rewards(eps, value=1.0) == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------- accuracy


class RecordingJudge(Judge):
    name = "recording"

    def __init__(self, scores):
        self.scores = scores
        self.seen: list[JudgeRequest] = []

    def grade(self, requests):
        self.seen.extend(requests)
        return [Verdict(self.scores[i], ok=i != 1) for i in range(len(requests))]


def test_judge_verdicts_pass_final_answers_to_the_judge_in_order():
    judge = RecordingJudge([1.0, 0.0, 1.0, 0.0])
    preds = [episode(RESIZE, answer_text("t", "\\boxed{B}")), "<think>x</think><answer> red </answer>", "blue", None]
    verdicts = judge_verdicts(preds, ["B", "red", "blue", "x"], ["q1", "q2", "q3", "q4"], judge)
    assert [(v.score, v.ok) for v in verdicts] == [(1.0, True), (0.0, False), (1.0, True), (0.0, True)]
    assert [r.prediction for r in judge.seen] == ["B", "red", "blue", None]
    assert [(r.question, r.truth) for r in judge.seen] == [("q1", "B"), ("q2", "red"), ("q3", "blue"), ("q4", "x")]


def test_judge_verdicts_with_rule_judge():
    preds = [episode(DIRECT), episode(RESIZE, answer_text("t", "blue")), "<think>only a call</think>", "  "]
    verdicts = judge_verdicts(preds, ["Red", "red", "red", "red"], ["q"] * 4, RuleJudge())
    assert [v.score for v in verdicts] == [1.0, 0.0, 0.0, 0.0]
    assert judge_verdicts([], [], [], RuleJudge()) == []
    with pytest.raises(ValueError, match="length"):
        judge_verdicts(["a"], ["a", "b"], ["q"], RuleJudge())


def test_prediction_text():
    assert prediction_text(None) is None
    assert prediction_text("  42 ") == "42"
    assert prediction_text("") is None
    assert prediction_text("\\boxed{7}") == "7"
    assert prediction_text(episode(DIRECT)) == "red"


# ---------------------------------------------------------------- total


def test_total_rewards_hand_computed():
    acc = [1, 1, 0, 1]
    fmt = [0.5, 0.5, 0.5, 0.0]
    resized = [F, T, T, T]
    # correct: 0 (direct), 1 and 3 (resized) -> r = 1/3 >= 0.2 -> correct resized answers lose 0.1.
    parts = total_rewards(acc, fmt, resized, ["g"] * 4)
    assert parts.penalty == pytest.approx([0, 0.1, 0, 0.1])
    assert parts.total == pytest.approx([1.5, 1.4, 0.5, 0.9])
    assert parts.accuracy == [1.0, 1.0, 0.0, 1.0]
    assert parts.format == fmt
    assert parts.correct == [T, T, F, T]
    none = total_rewards(acc, fmt, resized, ["g"] * 4, variant="none")
    assert none.total == pytest.approx([1.5, 1.5, 0.5, 1.0])
    # theta = 0.5: r = 1/3 < theta -> the correct direct answer loses 0.1 instead.
    high = total_rewards(acc, fmt, resized, ["g"] * 4, theta=0.5)
    assert high.total == pytest.approx([1.4, 1.5, 0.5, 1.0])
    # release with r = 1/3: correct resized scaled to 0.9, direct untouched.
    release = total_rewards(acc, fmt, resized, ["g"] * 4, variant="release")
    assert release.total == pytest.approx([1.5, 1.4, 0.5, 0.9])


def test_total_rewards_two_groups_interleaved():
    acc = [1, 1, 1, 1, 1, 0]
    fmt = [0.5] * 6
    resized = [F, F, T, T, T, T]
    groups = ["a", "b", "a", "b", "b", "b"]
    # a: correct direct 1, resized 1 -> r = 0.5 -> resized penalised. b: 1 direct, 2 resized -> r = 1/3 -> resized.
    parts = total_rewards(acc, fmt, resized, groups)
    assert parts.total == pytest.approx([1.5, 1.5, 1.4, 1.4, 1.4, 0.5])


def test_episode_rewards_end_to_end():
    eps = [episode(DIRECT), episode(RESIZE, DIRECT), episode("<answer>red</answer>"), episode(RESIZE, DIRECT)]
    out = group_rewards(grade_episodes(eps, ["red", "red", "red", "blue"], ["q"] * 4, RuleJudge()), [0, 0, 0, 1])
    # group 0: all three correct, one resized -> r = 2/3 -> resized loses 0.1; group 1: wrong, nothing.
    assert out.accuracy == [1.0, 1.0, 1.0, 0.0]
    assert out.format == [0.5, 0.5, 0.0, 0.5]
    assert out.total == pytest.approx([1.5, 1.4, 1.0, 0.5])
    assert out.verdicts is not None and all(v.ok for v in out.verdicts)


# ---------------------------------------------------------------- tied groups


def test_tied_groups_and_filter():
    rewards = [1.0, 1.0, 0.5, 1.5, 0.0, 0.0, 2.0, 1.0, 1.0 + 1e-12]
    groups = ["a", "b", "a", "b", "c", "c", "solo", "d", "d"]
    assert tied_groups(rewards, groups) == {"c", "solo", "d"}
    assert filter_tied_groups(rewards, groups) == [0, 1, 2, 3]
    assert filter_tied_groups(rewards, groups, drop_tied=False) == list(range(9))
    assert filter_tied_groups(rewards, groups, also_drop={"b"}) == [0, 2]
    assert filter_tied_groups(rewards, groups, drop_tied=False, also_drop=["c"]) == [0, 1, 2, 3, 6, 7, 8]
    assert tied_groups([1.0, 1.05], ["x", "x"], atol=0.1) == {"x"}
    assert tied_groups([], []) == set()


def test_failed_groups():
    assert failed_groups([True, False, True, True, False], ["a", "b", "a", "c", "b"]) == {"b"}
    assert failed_groups([True, True], [1, 2]) == set()
