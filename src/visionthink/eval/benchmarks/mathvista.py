"""MathVista testmini (1,000): answer extraction, MathVista's normalisation, then exact match."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import check_predictions, open_source, parse_dict, parse_list, rules_then_judge
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import mathvista_match
from visionthink.rewards.judge_base import Judge

_DECIMALS = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}


def lmms_prompt(question: str, unit: str | None, choices: list[str] | None, question_type: str, answer_type: str,
                precision: int | None) -> str:
    """lmms-eval's `format-prompt`: question [(Unit: u)], lettered choices, then the answering hint."""
    text = question.strip()
    if unit:
        text += f" (Unit: {unit})"
    if choices:
        text += "".join(f"\n{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    if question_type == "multi_choice":
        hint = "Answer with the option's letter from the given choices directly."
    elif answer_type == "integer":
        hint = "Answer the question using a single integer number."
    elif answer_type == "float":
        places = _DECIMALS.get(precision or 0)
        hint = ("Answer the question using a single floating-point number"
                + (f" with {places}." if places else "."))
    elif answer_type == "list":
        hint = "Answer the question using a Python list."
    else:
        hint = ""
    return f"{text}\n{hint}" if hint else text


class MathVista(Benchmark):
    """Accuracy after MathVista's extract -> normalise -> `str(pred) == str(answer)` pipeline, with a
    rule-based extraction in place of the reference's GPT call. With a judge, answers the rules mark
    wrong are sent to the judge (VLMEvalKit's rules-first, GPT-second order).
    Breakdowns: `score/<metadata.task>` and `score/<question_type>`."""

    name = "mathvista"
    layout = published(
        "AI4Math/MathVista", "data/testmini-*.parquet",
        "pid, question, image (path), decoded_image, choices (list|null),\n"
        "  unit, precision, answer, question_type (multi_choice|free_form), answer_type\n"
        "  (text|integer|float|list), metadata (struct: category, context, grade, language, skills, source,\n"
        "  split, task, ...), query",
        "MathVista_MINI", "index, image (base64), question (the full query), answer, [answer_option], choices (repr\n"
        "  list), question_type, answer_type, [task], [skills], [precision], [unit]")

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["MathVista_MINI"], splits=[["testmini"]],
                             hf_columns=["pid", "question", "decoded_image", "choices", "answer", "question_type",
                                         "answer_type"],
                             tsv_columns=["index", "image", "question", "answer", "question_type", "answer_type"])
        samples = []
        for uid, image, row in source.each(key="pid", images=("decoded_image", "image")):
            choices = parse_list(row.get("choices")) or None
            precision = _precision(row.get("precision"))
            question_type, answer_type = str(row["question_type"]), str(row["answer_type"])
            if source.kind == "tsv":
                question, task = str(row["question"]), row.get("task") or ""
            else:
                question = lmms_prompt(str(row["question"]), row.get("unit"), choices, question_type, answer_type,
                                       precision)
                task = parse_dict(row.get("metadata")).get("task") or ""
            samples.append(Sample(f"mathvista-{uid}", image, question, str(row["answer"]).strip(), {
                "choices": choices, "precision": precision, "question_type": question_type,
                "answer_type": answer_type, "task": task, "raw_question": str(row["question"]),
            }))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        rules = [float(mathvista_match(p, str(s.answer), s.meta["question_type"], s.meta["answer_type"],
                                       s.meta.get("choices"), s.meta.get("precision")))
                 for s, p in zip(samples, predictions, strict=True)]
        return rules_then_judge(self.name, samples, predictions, rules, judge,
                                [[s.meta.get("task", ""), s.meta["question_type"]] for s in samples])


def _precision(value: object) -> int | None:
    """HF stores precision as a float (1.0); `round(x, 1.0)` raises, so cast to int."""
    if value is None or value == "" or value != value:
        return None
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None

