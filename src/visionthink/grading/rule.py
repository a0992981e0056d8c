"""The rule grade of one answer: what the rule judge rewards in training and what eval scores by."""

from __future__ import annotations

import math

from visionthink.grading.choices import extract_choice, parse_options
from visionthink.grading.math_check import math_equivalent
from visionthink.grading.numbers import parse_number
from visionthink.grading.text import normalize_keeping_numbers, unwrap

REL_TOL = 1e-6
ABS_TOL = 1e-9


def grade_answer(truth: str | None, prediction: str | None, question: str = "", *, rel_tol: float = REL_TOL,
                 abs_tol: float = ABS_TOL, use_math: bool = True) -> tuple[int, str]:
    """(1 or 0, the rule that decided) for one answer; both texts are unwrapped from ``<answer>``/``\\boxed{}``.

    In order: an empty answer is wrong ("empty"); two numbers compare by value within `rel_tol` /
    `abs_tol` and nothing else ("numeric": ``3/4`` == ``0.75``, ``1,234`` == ``1234``); when the
    question lists options and both answers name one, the options compare ("choice"); then
    normalised exact match ("exact"); last, math-verify on formulas ("math"); else "mismatch".
    """
    prediction, truth = unwrap(prediction), unwrap(truth) or ""
    if not prediction:
        return 0, "empty"
    a, b = parse_number(prediction), parse_number(truth)
    if a is not None and b is not None:
        return int(math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)), "numeric"
    options = parse_options(question)
    if len(options) >= 2:
        picked = extract_choice(prediction, options, ignore_case=True)
        wanted = extract_choice(truth, options, ignore_case=True)
        if picked is not None and wanted is not None:
            return int(picked == wanted), "choice"
    left, right = normalize_keeping_numbers(prediction), normalize_keeping_numbers(truth)
    if left and left == right:
        return 1, "exact"
    if use_math and math_equivalent(truth, prediction):
        return 1, "math"
    return 0, "mismatch"


def exact_match(prediction: str | None, truth: str) -> bool:
    """Whether `prediction` is right by the rule grade (the rule judge's verdict, without a question)."""
    return grade_answer(truth, prediction)[0] == 1
