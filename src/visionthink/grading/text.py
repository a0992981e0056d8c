"""Answer text normalisation: one normaliser, and a variant that keeps numbers intact."""

from __future__ import annotations

import re
import string

from visionthink.protocol import extract_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_MINUS = re.compile(r"(?<![\w.])-(?=\d)")


def normalize(text: str | None) -> str:
    """Lower case, no punctuation, no articles (unless nothing else is left), single spaces."""
    if text is None:
        return ""
    text = " ".join(str(text).lower().strip().translate(_NO_PUNCTUATION).split())
    without_articles = " ".join(_ARTICLES.sub(" ", text).split())
    return without_articles or text


def normalize_keeping_numbers(text: str | None) -> str:
    """`normalize`, but a decimal point, a comma or a minus sign inside a number survives
    (``3.5`` != ``35``), and a lone article stays (the option ``A`` is not the empty string)."""
    if text is None:
        return ""
    text = _DECIMAL_POINT.sub("\x00", str(text))
    text = _DIGIT_COMMA.sub("\x01", text)
    text = _MINUS.sub("\x02", text)
    result = normalize(text) or " ".join(text.lower().translate(_NO_PUNCTUATION).split())
    return result.replace("\x00", ".").replace("\x01", ",").replace("\x02", "-")


def unwrap(text: str | None) -> str | None:
    """The answer inside ``<answer>`` / ``\\boxed{}`` when the text has one, else the text, stripped."""
    if text is None:
        return None
    text = str(text).strip()
    if "<answer>" in text or "\\boxed{" in text:
        inner = extract_answer(text)
        if inner is not None:
            text = inner
    return text


def final_answer_text(prediction: str | None) -> str:
    """The part of a free answer that states the result: `\\boxed{}` / `<answer>` content, else the
    text after the last "answer is"/"Answer:", else the whole text."""
    text = (prediction or "").strip()
    inner = extract_answer(text)
    if inner is not None:
        return inner
    matches = list(re.finditer(r"(?i)(?:final answer|answer)\s*(?:is|:|=)\s*", text))
    if matches:
        tail = text[matches[-1].end():].strip()
        return tail.split("\n")[0].strip().rstrip(".").strip() or text
    return text
