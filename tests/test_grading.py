"""Tests for `visionthink.grading`: the one grader behind the rule judge (training reward) and eval."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from visionthink.eval.benchmarks.base import Sample
from visionthink.eval.benchmarks.synth import Synth
from visionthink.grading import (
    exact_match,
    extract_choice,
    grade_answer,
    looks_like_math,
    math_check,
    math_equivalent,
    parse_number,
    parse_options,
)
from visionthink.rewards.judge_base import JudgeRequest
from visionthink.rewards.rule_judge import RuleJudge

CHOICES = "Which one? (A) cat (B) dog (C) cow"

# (question, truth, prediction, right?): the training reward and the eval score must say the same
AGREEMENT = [
    ("q", "0.75", "3/4", True),
    ("q", "3/4", "0.75", True),
    ("q", "1234", "1,234", True),
    ("q", "45", "45%", True),
    ("q", "12", "$12", True),
    ("q", "1000", "1e3", True),
    ("q", "1000", "1_000", True),
    ("q", "3", "3.0", True),
    ("q", "3.5", "35", False),
    ("q", "-3", "3", False),
    ("q", "1", "1.001", False),
    ("q", "0.75", "\\frac{3}{4}", True),
    ("q", "\\frac{1}{2}", "0.5", True),
    ("q", "x+1", "1+x", True),
    ("q", "2\\sqrt{3}", "\\sqrt{12}", True),
    ("q", "3", "2 and 3", False),  # a hedge, not 3
    ("q", "3", "3 apples", False),  # prose is never handed to math-verify
    ("q", "red", "der", False),  # nor are words (math-verify reads "red" as r*e*d)
    ("q", "cat", "The Cat.", True),
    ("q", "red", "blue", False),
    ("q", "red", "", False),
    ("q", "red", None, False),
    ("q", "7", "<think>hmm</think><answer>\\boxed{7}</answer>", True),
    ("q", "circle", "circles", False),
    ("q", "2", "two", False),
    (CHOICES, "B", "dog", True),
    (CHOICES, "B", "b", True),
    (CHOICES, "(B) dog", "The answer is B", True),
    (CHOICES, "B", "A", False),
]


@pytest.mark.parametrize(("question", "truth", "prediction", "right"), AGREEMENT)
def test_rule_judge_and_eval_score_agree(question, truth, prediction, right):
    [verdict] = RuleJudge().grade([JudgeRequest(question, truth, prediction)])
    sample = Sample(uid="u", image=None, question=question, answer=truth)
    eval_score = Synth().score([sample], [prediction]).per_sample[0]
    assert verdict.ok and verdict.score == eval_score == float(right)
    if question == "q":  # without options to read, exact_match (curate) is the same grade
        assert exact_match(prediction, truth) is right


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3.0), ("-2.5", -2.5), ("+5", 5.0), ("1,234.5", 1234.5), ("45%", 45.0), ("$12", 12.0), ("3/4", 0.75),
     ("1e3", 1000.0), (".5", 0.5), ("7.", 7.0), ("1_000", 1000.0), ("1,23", None), ("3/0", None), ("abc", None),
     ("", None), (None, None), ("inf", None), ("1/2/3", None)],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_parse_options_reads_lines_then_inline():
    assert parse_options("Pick: (A) a red cat (B) dog\n(C) cow") == {"A": "a red cat", "B": "dog", "C": "cow"}
    assert parse_options("Choices:\nA:40°\nB:60°") == {"A": "40°", "B": "60°"}
    assert parse_options("What is (x) here?") == {}


def test_extract_choice_case():
    options = {"A": "cat", "B": "dog"}
    assert extract_choice("b", options) is None  # the benchmarks' rule: a lower-case letter is no choice
    assert extract_choice("b", options, ignore_case=True) == "B"
    assert extract_choice("b. dog", options, ignore_case=True) == "B"


def test_grade_names_the_rule():
    assert grade_answer("0.75", "3/4") == (1, "numeric")
    assert grade_answer("B", "dog", CHOICES) == (1, "choice")
    assert grade_answer("cat", "The cat") == (1, "exact")
    assert grade_answer("x+1", "1+x") == (1, "math")
    assert grade_answer("x+1", "1+x", use_math=False) == (0, "mismatch")
    assert grade_answer("red", "  ") == (0, "empty")


def test_looks_like_math():
    for formula in ("x + 1", "\\frac{3}{4}", "2\\sqrt{3}", "60°", "(1, 2)"):
        assert looks_like_math(formula)
    for prose in ("3 apples", "2 and 3", "red", "", "\\text{cm} 5 cm"):
        assert not looks_like_math(prose)


# ---------------------------------------------------------------- math-verify off the main thread


def _in_thread(function, *args):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result(timeout=60)


def test_math_check_works_in_a_worker_thread():
    cases = [("0.75", "\\frac{3}{4}", True), ("x+1", "1+x", True), ("x+1", "x+2", False), ("3", "2 and 3", False)]
    for truth, prediction, equal in cases:
        assert math_equivalent(truth, prediction) is equal  # main thread
        assert _in_thread(math_equivalent, truth, prediction) is equal
    # the rule judge in a worker thread (as the HTTP judge's fallback and trainers' reward threads call it)
    [verdict] = _in_thread(RuleJudge().grade, [JudgeRequest("q", "x+1", "1+x")])
    assert verdict == RuleJudge().grade([JudgeRequest("q", "x+1", "1+x")])[0] and verdict.score == 1.0


def test_math_check_uses_signal_timeouts_only_in_the_main_thread(monkeypatch):
    module = math_check._math_verify()
    seen: list[tuple[str, object]] = []
    real_parse, real_verify = module.parse, module.verify

    def parse(text, **kwargs):
        seen.append((threading.current_thread().name, kwargs.get("parsing_timeout")))
        return real_parse(text, **kwargs)

    def verify(gold, answer, **kwargs):
        seen.append((threading.current_thread().name, kwargs.get("timeout_seconds")))
        return real_verify(gold, answer, **kwargs)

    monkeypatch.setattr(module, "parse", parse)
    monkeypatch.setattr(module, "verify", verify)
    assert math_equivalent("0.5", "\\frac{1}{2}")
    assert {timeout for _, timeout in seen} == {math_check.TIMEOUT_SECONDS}
    seen.clear()
    assert _in_thread(math_equivalent, "0.5", "\\frac{1}{2}")
    assert seen and {timeout for _, timeout in seen} == {None}


def test_math_check_refuses_unbounded_work_off_the_main_thread():
    long = "+".join(["x"] * 150)
    nested = "2^{2^{2^{2^{2^{10}}}}}"
    start = time.monotonic()
    assert _in_thread(math_equivalent, long, long) is False
    assert _in_thread(math_equivalent, "1", nested) is False
    assert time.monotonic() - start < 5.0
