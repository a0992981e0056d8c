"""Rule-based answer scoring shared by the demo, evaluation and rewards."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?%?$")


def normalize(text: str | None) -> str:
    """Lower case, no punctuation, no articles (unless nothing else is left), single spaces."""
    if text is None:
        return ""
    text = text.lower().strip()
    text = " ".join(text.translate(str.maketrans("", "", string.punctuation)).split())
    without_articles = " ".join(_ARTICLES.sub(" ", text).split())
    return without_articles or text


def as_number(text: str | None) -> float | None:
    """The value of a plain number ("3", "-2.5", "1,234", "40%"), else None."""
    if text is None:
        return None
    candidate = text.strip().rstrip(".").strip()
    if not candidate or not _NUMBER.match(candidate) or not any(c.isdigit() for c in candidate):
        return None
    return float(candidate.replace(",", "").rstrip("%"))


def exact_match(prediction: str | None, truth: str) -> bool:
    """Normalised exact match; plain numbers compare by value (`3` == `3.0`, `-3` != `3`)."""
    a, b = as_number(prediction), as_number(truth)
    if a is not None or b is not None:
        return a is not None and b is not None and a == b
    normalized = normalize(prediction)
    return bool(normalized) and normalized == normalize(truth)
