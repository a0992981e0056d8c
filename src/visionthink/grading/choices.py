"""One multiple-choice reader: the options a question lists, and the option an answer picks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from visionthink.grading.text import normalize

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\s*[.:)\uff1a]\s*(.+?)\s*$", re.M)
_OPTION_INLINE = re.compile(r"\(([A-Za-z])\)\s*(.+?)(?=\s*\([A-Za-z]\)|\n|$)")
_LETTER_ONLY = re.compile(r"^[\s(\[]*([A-Z])[\s)\]]*[.:,;!]?\s*$")
_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)(?:\s+(?i:is|should\s+be|would\s+be))?\s*[:\uff1a]?\s*"
    r"(?i:option\s+)?[(\[]?([A-Z])(?![A-Za-z0-9])"
)
_LEADING_LETTER = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\uff1a](?!\d)")
_LONE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")


def parse_options(text: str | None) -> dict[str, str]:
    """The options a question lists -> {letter: text}.

    One per line as "A. text", "(A) text", "A: text" or "A) text"; when fewer than two are found
    that way, several on one line as "(A) cat (B) dog" (letters upper-cased) if that finds two or more.
    """
    options: dict[str, str] = {}
    for letter, body in _OPTION_LINE.findall(text or ""):
        options.setdefault(letter, body)
    if len(options) >= 2:
        return options
    inline: dict[str, str] = {}
    for letter, body in _OPTION_INLINE.findall(text or ""):
        inline.setdefault(letter.upper(), body.strip())
    return inline if len(inline) >= 2 else options


def extract_choice(prediction: str | None, options: Mapping[str, str] | Iterable[str],
                   ignore_case: bool = False) -> str | None:
    """The option letter a free-text answer picks, or None.

    `options` is {letter: text} or just the valid letters. Rules, first hit wins: the answer is a
    bare letter ("B", "(B)", "B."); it equals an option's text; it says "answer is B" / "Answer: B";
    it starts with a letter and a separator ("B. Straight", "(C) Right"); exactly one valid capital
    letter stands alone in it (the article "A" before a lower-case word excluded); exactly one
    option's text appears in it as words (an option contained in another one's text is dropped).
    `ignore_case` lets a lower-case letter count in the bare-letter and leading-letter rules.
    """
    texts = dict(options) if isinstance(options, Mapping) else {letter: "" for letter in options}
    letters = set(texts)
    text = (prediction or "").strip()
    if not text or not letters:
        return None
    cased = text.upper() if ignore_case else text
    match = _LETTER_ONLY.match(cased)
    if match and match.group(1) in letters:
        return match.group(1)
    normalised = normalize(text)
    by_text = [letter for letter, body in texts.items() if body and normalize(body) == normalised]
    if len(by_text) == 1:
        return by_text[0]
    for match in _ANSWER_IS.finditer(text):
        if match.group(1) in letters:
            return match.group(1)
    match = _LEADING_LETTER.match(cased)
    if match and match.group(1) in letters:
        return match.group(1)
    lone = set()
    for match in _LONE_LETTER.finditer(text):
        letter = match.group(1)
        following = text[match.end():match.end() + 2]
        if letter == "A" and len(following) == 2 and following[0] == " " and following[1].islower():
            continue  # the article
        if letter in letters:
            lone.add(letter)
    if len(lone) == 1:
        return lone.pop()
    padded = f" {normalised} "
    contained = {letter: normalize(body) for letter, body in texts.items()
                 if body and normalize(body) and f" {normalize(body)} " in padded}
    maximal = [letter for letter, body in contained.items()
               if not any(body != other and body in other for other in contained.values())]
    if len(maximal) == 1:
        return maximal[0]
    return None
