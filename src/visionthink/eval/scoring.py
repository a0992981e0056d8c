"""Rule-based answer scoring shared by the demo, evaluation and rewards."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str | None) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    if text is None:
        return ""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, truth: str) -> bool:
    """Normalised exact match; numbers compare by value (`3` == `3.0`)."""
    a, b = normalize(prediction), normalize(truth)
    if a == b and a:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False
