"""What an LLM judge is asked and how its reply is read: the prompt, and the ``Score: 0|1`` parser.

An LLM judge is asked to end its reply with ``Score: 0`` or ``Score: 1``; the LAST such line decides
(the release counted a reply as correct when the character "1" appeared anywhere in it; we do not).
"""

from __future__ import annotations

import re

from visionthink.rewards.judge_base import JudgeRequest

JUDGE_SYSTEM = "You are a careful and impartial grader of answers to questions about images."
JUDGE_PROMPT = """\
Decide whether a model's answer to a question about an image is correct, given the ground-truth answer.
You do not see the image; compare the model's answer with the ground truth only.

Rules:
- Accept synonyms, paraphrases and different formatting of the same answer (for example "2" and "two", \
"car" and "automobile", "(B) cat" and "cat" when option B is cat).
- Be strict on definitive answers: a different value, a different option, a refusal, or hedging between \
several answers is wrong.
- Be strict on units and magnitudes: a number with a wrong or missing required unit, or a wrong scale, is wrong.
- Ignore the explanation around the answer; grade only the final answer it gives.

Question: {question}
Ground-truth answer: {truth}
Model's answer: {prediction}

Explain briefly, then end your reply with a line that is exactly "Score: 1" if the model's answer is \
correct or "Score: 0" if it is not."""

_PLACEHOLDER = re.compile(r"\{(question|truth|prediction)\}")
# Matched against the lower-cased reply. Linear time on any input, and fast: the pattern starts with a
# literal, so the engine jumps from one "score" to the next, and each run of blanks or asterisks after
# one is read at most 64 characters far, once (the old `\**\s*...\s*\**\s*` tried every way to split
# a run: "Score:" + 32,000 spaces took 21 s).
_SCORE = re.compile(r"score(?<!\wscore)\b[\s*]{0,64}+[:：][\s*]{0,64}+([01])(?:\.0{0,64}+)?(?![\d.])")
_YES_NO = re.compile(r"\[\[\s{0,64}+(yes|no)\s{0,64}+\]\]")


def render_prompt(request: JudgeRequest, template: str = JUDGE_PROMPT) -> str:
    """The judge prompt for one request (placeholders filled in one pass, so answers cannot inject them)."""
    values = {"question": request.question, "truth": request.truth, "prediction": request.prediction or ""}
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def parse_score(text: str | None) -> int | None:
    """The LAST ``Score: 0|1`` in a judge reply (case-insensitive), or None when there is none.

    "score" must be a whole word ("Subscore: 1" is not a score); up to 64 blanks and asterisks may
    surround the colon (``**Score:** 1``); "1.0" counts, "10", "0.5" and "01" do not. Linear time:
    10 MB take well under a second.
    """
    if not isinstance(text, str):
        return None
    matches = _SCORE.findall(text.lower())
    return int(matches[-1]) if matches else None


def parse_judgement(text: str | None) -> int | None:
    """The last verdict in a reply: whichever of ``Score: 0|1`` or ``[[YES]]``/``[[NO]]`` comes last."""
    if not isinstance(text, str):
        return None
    text = text.lower()
    found: list[tuple[int, int]] = [(m.start(), int(m.group(1))) for m in _SCORE.finditer(text)]
    found += [(m.start(), int(m.group(1) == "yes")) for m in _YES_NO.finditer(text)]
    return max(found)[1] if found else None
