"""One math-equivalence check: `math-verify`, made safe to call from any thread.

math-verify bounds parsing and comparison with ``signal.alarm``, which only works in the main
thread (elsewhere it raises, and its own fallback is no bound at all). So in the main thread its
timeouts are used; in any other thread they are turned off and the inputs are bounded instead
(`MAX_CHARS_OFF_MAIN`, no nested powers), so that one odd answer cannot stall a grader thread.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from types import ModuleType

TIMEOUT_SECONDS = 5
"""math-verify's own bound on parsing and on comparing, in the main thread."""
MAX_CHARS_OFF_MAIN = 200
"""Longest answer handed to math-verify outside the main thread, where nothing can interrupt it."""

_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_NESTED_POWER = re.compile(r"\^[^+\-=,]*\^")


@functools.cache
def _math_verify() -> ModuleType:
    """math-verify, imported on first use (it loads sympy: half a second)."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once when timeouts are off
    return math_verify


def looks_like_math(text: str) -> bool:
    """True when `text` is a formula, not prose: no word of two or more letters outside LaTeX
    commands ("x + 1", "\\frac{3}{4}" yes; "3 apples", "2 and 3", "red" no)."""
    return bool(text.strip()) and not _WORD.search(_COMMAND.sub(" ", text))


def _as_latex(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text else f"${text}$"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def math_equivalent(truth: str | None, prediction: str | None) -> bool:
    """Whether two formulas are mathematically equal according to math-verify (``"3/4"`` and
    ``"\\frac{3}{4}"``, ``"x+1"`` and ``"1+x"``). Prose on either side, an answer too long for
    this thread, or any math-verify failure gives False; never raises."""
    if not truth or not prediction or not looks_like_math(truth) or not looks_like_math(prediction):
        return False
    main = _in_main_thread()
    if not main and any(len(t) > MAX_CHARS_OFF_MAIN or _NESTED_POWER.search(t) for t in (truth, prediction)):
        return False
    timeout = TIMEOUT_SECONDS if main else None
    try:
        math_verify = _math_verify()
        gold = math_verify.parse(_as_latex(truth), parsing_timeout=timeout)
        answer = math_verify.parse(_as_latex(prediction), parsing_timeout=timeout)
        if not gold or not answer:
            return False
        return bool(math_verify.verify(gold, answer, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a grader must not raise on odd answers
        return False
