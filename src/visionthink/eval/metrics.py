"""The official metrics of the nine VQA benchmarks, as pure functions.

Each function follows the rule the benchmark's reference scorer applies (lmms-eval, VLMEvalKit or
the benchmark's own repository; each function's docstring names which). Where the reference
pipeline calls an LLM to extract an answer (MathVista, MathVerse), a rule-based extraction stands
in for it; a `Judge` can be added on top by the benchmark classes.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterable, Mapping, Sequence

from visionthink.grading import (
    extract_choice,
    final_answer_text,
    math_equivalent,
    math_value,
    numbers_in,
    parse_options,  # noqa: F401 - re-exported: the benchmarks' metric helpers live here
    values_close,
)
from visionthink.protocol import extract_answer

# ---------------------------------------------------------------- edit distance


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


# ---------------------------------------------------------------- ChartQA


def _relaxed_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str | None, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA's relaxed match: within 5% of a non-zero numeric target, else case-insensitive equality.

    A trailing `%` divides by 100 on either side (so "47%" against "47" fails, as in the reference);
    there is no punctuation stripping ("Yes." fails against "Yes"). The prediction is stripped.
    """
    prediction = (prediction or "").strip()
    target = str(target)
    p, t = _relaxed_float(prediction), _relaxed_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str | None, targets: str | Sequence[str], tolerance: float = 0.05) -> float:
    """1.0 if any target matches under `relaxed_correctness`, else 0.0."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    return float(any(relaxed_correctness(prediction, t, tolerance) for t in targets))


# ---------------------------------------------------------------- DocVQA


def anls(prediction: str | None, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one question (DocVQA, lmms-eval's `anls`).

    Each reference and the prediction are lower-cased, stripped and whitespace-collapsed; the
    distance is divided by the longer of the two RAW strings' lengths taken after `.upper()`, as
    lmms-eval (75571cf, `api/metrics.py::anls`) does ("ß" counts 2 there). The question scores
    `1 - min(normalised distance)`, or 0 when that is below `threshold`.
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        return 0.0
    raw_prediction = prediction or ""
    predicted = " ".join(raw_prediction.strip().lower().split())
    distances = []
    for answer in answers:
        answer = str(answer)
        truth = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(raw_prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(truth, predicted) / length)
    score = 1.0 - min(distances)
    return score if score >= threshold else 0.0


# ---------------------------------------------------------------- OCRBench

OCRBENCH_HME_CATEGORY = "Handwritten Mathematical Expression Recognition"


def ocrbench_match(prediction: str | None, answers: str | Sequence[str], hme: bool = False) -> bool:
    """OCRBench's rule: a normalised answer is a substring of the normalised prediction.

    General items: lower-case, strip, newlines to spaces. Handwritten maths (HME100k, `hme=True`):
    newlines to spaces, then every space removed, case kept.
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    prediction = prediction or ""
    if hme:
        predicted = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(str(a).strip().replace("\n", " ").replace(" ", "") in predicted for a in answers)
    predicted = prediction.lower().strip().replace("\n", " ")
    return any(str(a).lower().strip().replace("\n", " ") in predicted for a in answers)


# ---------------------------------------------------------------- MME

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(prediction: str | None) -> str:
    """lmms-eval's MME parse: "yes", "no" or "other".

    Lower-case, strip, delete dots; an exact yes/no wins; a single character maps y/n; otherwise
    the first four characters decide ("yes" inside them, then "no" inside them).
    """
    text = (prediction or "").lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_category_kind(category: str) -> str | None:
    """"perception", "cognition", or None for a category MME does not define."""
    lowered = category.lower()
    if lowered in (c.lower() for c in MME_PERCEPTION):
        return "perception"
    if lowered in (c.lower() for c in MME_COGNITION):
        return "cognition"
    return None


def mme_scores(categories: Sequence[str], image_ids: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """MME's paper-scale scores.

    Per category: acc (% of questions right) + acc+ (% of images whose questions are all right),
    at most 200. `perception` and `cognition` sum their categories (max 2000 and 800); `total`
    sums every category and `max_total` is 200 per category present.
    Returns `points/<category>` plus those four keys.
    """
    per_category: dict[str, dict[str, list[bool]]] = {}
    for category, image_id, ok in zip(categories, image_ids, correct, strict=True):
        per_category.setdefault(category, {}).setdefault(image_id, []).append(bool(ok))
    result: dict[str, float] = {}
    perception = cognition = total = 0.0
    for category, images in sorted(per_category.items()):
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(oks) for oks in images.values()) / len(images)
        points = acc + acc_plus
        result[f"points/{category}"] = points
        total += points
        kind = mme_category_kind(category)
        if kind == "perception":
            perception += points
        elif kind == "cognition":
            cognition += points
    result.update(perception=perception, cognition=cognition, total=total, max_total=200.0 * len(per_category))
    return result


# ---------------------------------------------------------------- POPE


def pope_yes_no(prediction: str | None, rule: str = "official") -> str | None:
    """A POPE answer as "yes"/"no" (None when there is none).

    `official` (RUCAIBox/POPE `evaluate.py`, LLaVA `eval_pope.py`): keep the text before the first
    ".", drop commas, split on spaces; any word "No", "no" or "not" means no, anything else yes --
    an empty answer included, as there. `lmms-eval`: only the exact (lower-cased, stripped) words
    "yes"/"no"; anything else is None. None (the model gave no answer at all) is None under both.
    """
    if prediction is None:
        return None
    if rule == "lmms-eval":
        text = prediction.lower().strip()
        return text if text in ("yes", "no") else None
    if rule != "official":
        raise ValueError(f"unknown POPE rule {rule!r}; expected 'official' or 'lmms-eval'")
    text = prediction.split(".")[0].replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(truths: Sequence[str], labels: Sequence[str | None], rule: str = "official") -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = "yes") and the yes-ratio.

    `official` (RUCAIBox/POPE `evaluate.py`): a missing label (None) is never correct and counts as
    a negative prediction (as VLMEvalKit treats "Unknown"); yes_ratio is the share of "yes"
    predictions. `lmms-eval` (75571cf, `tasks/pope/utils.py` aggregations): a label that is neither
    "yes" nor "no" is neither a false positive nor a false negative (recall counts only explicit
    "no"s), and `yes_ratio` is the share of "yes" in the ground truth, as lmms-eval computes it.
    Precision/recall/F1 are 0 when undefined.
    """
    if rule not in ("official", "lmms-eval"):
        raise ValueError(f"unknown POPE rule {rule!r}; expected 'official' or 'lmms-eval'")
    tp = fp = tn = fn = 0
    correct = truth_yes = 0
    for truth, label in zip(truths, labels, strict=True):
        truth = truth.strip().lower()
        correct += label == truth
        truth_yes += truth == "yes"
        if label == "yes":
            tp += truth == "yes"
            fp += truth != "yes"
        elif rule == "official" or label == "no":
            fn += truth == "yes"
            tn += truth != "yes"
    n = len(truths)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": ((truth_yes if rule == "lmms-eval" else tp + fp) / n) if n else 0.0,
    }


# ---------------------------------------------------------------- RealWorldQA

_NUMBER_WORDS = {word: str(i) for i, word in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_MCQ_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
_MCQ_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}
REALWORLDQA_RULES = ("lmms-eval", "lmms-eval-legacy")


def lmms_mcq_letter(response: str | None, choices: Iterable[str] = "ABCDEFGH") -> str:
    """The option letter lmms-eval's `_task_utils/mcq_extract.py::extract_mcq_answer` reads, "" for none.

    The rule of lmms-eval 75571cf (what `realworldqa` scores with since #1274), re-implemented: strip
    ``, . ! ? ; : ' "`` from both ends, then collect candidates, each with a rank and a position:
    the text starts with a letter not followed by a letter (10), ends with one not preceded by a
    letter (9), a letter anywhere after an answer phrase such as "answer is" (7), then the last
    "(X)" (6), "X." (5), "X:" (4), "X)" (3), "X " (2); with none of those, the last occurrence of
    any letter (0). The highest rank wins, then the later position. Letters are case-sensitive
    ("c" is not C), so "A dog" reads A and "A or B" reads A (start beats end).
    """
    text = (response or "").strip()
    if not text:
        return ""
    letters = list(choices)
    for char in ",.!?;:'\"":
        text = text.strip(char)
    padded = f" {text} "
    found: list[tuple[int, int, str]] = []
    for letter in letters:
        for pattern, kind in ((f"({letter})", "parentheses"), (f"{letter}.", "period"), (f"{letter}:", "colon"),
                              (f"{letter})", "right_paren"), (f"{letter} ", "space")):
            if pattern in padded:
                found.append((_MCQ_RANK[kind], padded.rfind(pattern), letter))
    lowered = padded.lower()
    for phrase in _MCQ_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            for letter in letters:
                position = padded.find(letter, at + len(phrase))
                if position != -1:
                    found.append((_MCQ_RANK["phrase"], position, letter))
    core = padded.strip()
    for letter in letters:
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            found.append((_MCQ_RANK["start"], 0, letter))
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((_MCQ_RANK["end"], len(padded) - 1, letter))
    if not found:
        found = [(_MCQ_RANK["fallback"], padded.rfind(letter), letter) for letter in letters if letter in padded]
    if not found:
        return ""
    return max(found, key=lambda candidate: (candidate[0], candidate[1]))[2]


def realworldqa_match(prediction: str | None, answer: str, options: Mapping[str, str] | None = None,
                      rule: str = "lmms-eval") -> bool:
    """RealWorldQA's exact match, as lmms-eval scores it.

    ``lmms-eval`` (75571cf, `tasks/realworldqa/utils.py` after #1274): an answer A-D needs
    `lmms_mcq_letter(prediction, "ABCD")` to be it; any other answer needs
    ``prediction.lower().strip().rstrip(".") == answer.lower()``.
    ``lmms-eval-legacy`` (the filters before #1274, the VisionThink era): a prediction that is a whole
    number word becomes its digits; with punctuation removed, the first option text found in it
    (case-sensitive, options in order) becomes its letter; then exact match ignoring case and
    punctuation. `options` maps letters to option texts (only the legacy rule reads them).
    None (no answer) is never right.
    """
    if rule not in REALWORLDQA_RULES:
        raise ValueError(f"unknown RealWorldQA rule {rule!r}; expected one of {REALWORLDQA_RULES}")
    truth = str(answer).strip()
    if prediction is None:
        return False
    if rule == "lmms-eval":
        if truth.upper() in ("A", "B", "C", "D"):
            return lmms_mcq_letter(prediction, "ABCD") == truth.upper()
        return prediction.lower().strip().rstrip(".") == truth.lower()
    response = _NUMBER_WORDS.get(prediction.lower(), prediction)
    cleaned = re.sub(r"[^\w\s]", "", response).strip()
    texts = [str(text).strip() for text in (options or {}).values()]
    to_letter = {text: chr(ord("A") + i) for i, text in enumerate(texts)}  # a repeated text: the last letter
    if texts:
        found = re.search("|".join(re.escape(text) for text in texts), cleaned)
        if found and found.group() in to_letter:
            cleaned = to_letter[found.group()]
    drop = str.maketrans("", "", string.punctuation)
    return cleaned.lower().translate(drop) == truth.lower().translate(drop)


# ---------------------------------------------------------------- MathVista


def _precision_digits(precision: float | int | str | None, answer: str) -> int | None:
    if precision is not None and precision == precision:  # HF stores 1.0: cast, `round(x, 1.0)` raises
        try:
            return int(float(precision))
        except (TypeError, ValueError):
            pass
    decimals = re.fullmatch(r"-?\d+\.(\d+)", answer.strip())
    return len(decimals.group(1)) if decimals else None


def _python_number(text: str, answer_type: str) -> str | None:
    """The official extractor's first try: `str(int(response))` / `str(float(response))` (Python's
    own parsing: blanks around, "+5", "1_000" and "1e3" are numbers), None when that raises."""
    try:
        if answer_type == "integer":
            return str(int(text))
        if answer_type == "float":
            return str(float(text))
    except (ValueError, OverflowError):
        return None
    return None


def mathvista_extract(response: str | None, question_type: str, answer_type: str,
                      choices: Sequence[str] | None = None) -> str | None:
    """MathVista's `extract_answer` (lupantech/MathVista 53d5258, `evaluation/extract_answer.py`),
    with a rule-based stand-in for its LLM call. None only when there is no response at all.

    As there: an empty response extracts as ""; a multiple-choice response equal to a choice is that
    choice; an integer/float response Python's `int()`/`float()` accept is that number. Stand-in:
    multiple choice, the final answer text if it is a choice, else the choice of the letter
    `extract_choice` finds, else the final answer text (normalisation then takes the closest choice);
    integer/float, the value of the final answer text, else its last number; list, the last [...]
    (as a Python list's `str()` when it parses as one); text, the final answer text.
    """
    if response is None:
        return None
    if response == "" or not response.strip():
        return ""
    if question_type == "multi_choice" and choices and (response in choices or response.strip() in choices):
        return response.strip()
    quick = _python_number(response, answer_type)
    if quick is not None:
        return quick
    response = response.strip()
    if question_type == "multi_choice" and choices:
        final = final_answer_text(response)
        if final in choices:
            return final
        letter = extract_choice(final, _lettered(choices)) or extract_choice(response, _lettered(choices))
        if letter is not None:
            return choices[ord(letter) - ord("A")]
        return final
    final = final_answer_text(response)
    if answer_type in ("integer", "float"):
        quick = _python_number(final, answer_type)
        if quick is not None:
            return quick
        value = math_value(final)
        if value is None:
            numbers = numbers_in(final) or numbers_in(response)
            value = numbers[-1] if numbers else None
        return None if value is None else repr(value)
    if answer_type == "list":
        found = re.findall(r"\[[^\[\]]*\]", final) or re.findall(r"\[[^\[\]]*\]", response)
        if not found:
            return None
        try:
            listed = ast.literal_eval(found[-1])
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return found[-1]
        return str(listed) if isinstance(listed, list) else found[-1]
    return final


def _lettered(choices: Sequence[str]) -> dict[str, str]:
    return {chr(ord("A") + i): str(choice) for i, choice in enumerate(choices)}


def mathvista_normalize(extraction: str | None, question_type: str, answer_type: str,
                        choices: Sequence[str] | None = None, precision: float | None = None,
                        answer: str = "") -> str | None:
    """MathVista's `normalize_extracted_answer` (lupantech/MathVista 53d5258, `calculate_score.py`).

    Multiple choice: the first "(x)" in it, upper-cased ("(b)" -> B), or the text itself; a letter of a
    choice maps to that choice, anything else to the choice at the smallest edit distance (the first
    such; so "" gives the shortest choice). integer: `str(int(float(x)))` (truncates). float:
    `str(round(float(x), int(precision)))`; without a precision (VLMEvalKit TSVs), the answer's own
    decimals. list: `str(x)`. Failures give None.
    """
    if extraction is None:
        return None
    text = str(extraction).strip()
    if question_type == "multi_choice" and choices:
        choices = [str(choice) for choice in choices]
        bracketed = re.findall(r"\(([a-zA-Z])\)", text)
        if bracketed:
            text = bracketed[0].upper()
        letters = _lettered(choices)
        if text in letters:
            return letters[text]
        return min(choices, key=lambda choice: levenshtein(text, choice))
    try:
        if answer_type == "integer":
            return str(int(float(text)))
        if answer_type == "float":
            digits = _precision_digits(precision, answer)
            value = float(text)
            return str(round(value, digits)) if digits is not None else str(value)
    except (ValueError, OverflowError):
        return None
    return text


def mathvista_match(response: str | None, answer: str, question_type: str, answer_type: str,
                    choices: Sequence[str] | None = None, precision: float | None = None) -> bool:
    """Extract, normalise, then the official ``prediction == answer`` on strings (blanks stripped),
    and nothing more: "1.2" is not "1.20", as in the official scorer; None (no answer) is wrong."""
    answer = str(answer).strip()
    extraction = mathvista_extract(response, question_type, answer_type, choices)
    normalised = mathvista_normalize(extraction, question_type, answer_type, choices, precision, answer)
    return normalised is not None and normalised.strip() == answer


# ---------------------------------------------------------------- MathVerse


def _math_normal_form(text: str) -> str:
    text = text.strip().strip("$").strip().rstrip(".").strip()
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\left|\\right|\\[,;!]", "", text)
    text = text.replace("√", "\\sqrt").replace("π", "\\pi").replace("dfrac", "frac").replace("tfrac", "frac")
    return re.sub(r"\s+", "", text).lower()


def mathverse_match(prediction: str | None, answer: str, question_type: str,
                    options: Mapping[str, str] | None = None) -> bool:
    """Rule-based stand-in for MathVerse's extraction + match judgement (the official two-stage GPT
    scorer, as in lmms-eval before May 2025: extract the answer, then 1 only when it "completely
    matches" the standard answer).

    Multi-choice (answer a letter): the letter `extract_choice` finds in the final answer text (or
    the whole response) must be the answer. Free-form: the stated answer is the `\\boxed{}` /
    `<answer>` content, else the rest of the line after the last "answer is" / "Answer:", else (no
    anchor) the last non-empty line. It matches when it equals the answer after light LaTeX
    normalisation (spaces, $, degrees, \\text, \\left/\\right dropped), or its value equals the
    answer's (`math_value`, relative 1e-4), or the one value it states equals a numeric answer
    (`_single_value`: "... = 12" gives 12, "2 and 3" is a hedge, not 3), or the shared math check
    (`visionthink.grading.math_equivalent`, math-verify on formulas, never on prose) says they are equal.
    Strict on purpose: answers the rules miss go to the judge when one is given.
    """
    truth = str(answer).strip()
    if not (prediction or "").strip():
        return False
    final = final_answer_text(prediction)
    if question_type == "multi-choice" or re.fullmatch(r"[A-Z]", truth):
        letters: Mapping[str, str] | str = options or "ABCDEFGH"
        picked = extract_choice(final, letters)
        if picked is None and final != prediction:
            picked = extract_choice(prediction, letters)
        return picked == truth
    final = _stated_answer(prediction or "")
    if _math_normal_form(final) == _math_normal_form(truth) and _math_normal_form(truth):
        return True
    truth_value = math_value(truth)
    if truth_value is not None:
        value = math_value(final)
        if value is not None and values_close(value, truth_value):
            return True
        stated = _single_value(final)
        if stated is not None and values_close(stated, truth_value):
            return True
    return math_equivalent(truth, final)


def _single_value(text: str) -> float | None:
    """The one value a stated answer gives, or None when it gives none or several.

    Clauses split at ", ", ";", " and ", " or ": more than one clause holding a number is a hedge or a
    list ("2 and 3", "x = 2, y = 3"). In the one such clause, what follows its last "=" counts
    ("(2\\sqrt{3})^2 = 12" gives 12): its value, or its number when it holds exactly one.
    """
    clauses = [clause for clause in re.split(r",\s+|;\s*|\s+(?:and|or)\s+", text) if numbers_in(clause)]
    if len(clauses) != 1:
        return None
    tail = clauses[0].rsplit("=", 1)[-1].strip()
    value = math_value(tail)
    if value is not None:
        return value
    numbers = numbers_in(tail)
    return numbers[0] if len(numbers) == 1 else None


def _stated_answer(prediction: str) -> str:
    """The boxed / tagged answer, else the line after the last "answer is"-style anchor, else the last
    non-empty line; a trailing full stop dropped."""
    text = prediction.strip()
    if extract_answer(text) is not None or re.search(r"(?i)(?:final answer|answer)\s*(?:is|:|=)", text):
        return final_answer_text(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip(".").strip() if lines else ""
