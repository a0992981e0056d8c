"""Answer grading shared by training rewards and evaluation: one normaliser, one number parser,
one multiple-choice reader, one math-equivalence check, and the rule grade built from them."""

from visionthink.grading.choices import extract_choice, parse_options
from visionthink.grading.math_check import looks_like_math, math_equivalent
from visionthink.grading.numbers import math_value, numbers_in, parse_number, values_close
from visionthink.grading.rule import exact_match, grade_answer
from visionthink.grading.text import final_answer_text, normalize, normalize_keeping_numbers, unwrap

__all__ = [
    "exact_match",
    "extract_choice",
    "final_answer_text",
    "grade_answer",
    "looks_like_math",
    "math_equivalent",
    "math_value",
    "normalize",
    "normalize_keeping_numbers",
    "numbers_in",
    "parse_number",
    "parse_options",
    "unwrap",
    "values_close",
]
