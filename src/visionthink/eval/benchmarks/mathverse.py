"""MathVerse testmini (3,940 = 788 problems x 5 versions): answer extraction then match."""

from __future__ import annotations

import os

from PIL import Image

from visionthink.eval.benchmarks._io import check_predictions, open_source, parse_dict, rules_then_judge
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import mathverse_match
from visionthink.grading import parse_options
from visionthink.rewards.judge_base import Judge


def _blank() -> Image.Image:
    """Stands in for the missing image of a text-only problem (the protocol always sends one)."""
    return Image.new("RGB", (56, 56), "white")


class MathVerse(Benchmark):
    """Accuracy with a rule-based stand-in for MathVerse's GPT extraction + match: multi-choice needs
    the answer letter, free-form needs an equal answer (light LaTeX normalisation or equal numeric
    value). With a judge, answers the rules mark wrong go to the judge (VLMEvalKit's order).
    Breakdowns: `score/<problem_version>` and `score/<subject>`."""

    name = "mathverse"
    layout = published(
        "CaraJ/MathVerse-lmmseval, config testmini,", "testmini/testmini-*.parquet",
        "sample_index, problem_index, problem_version, question,\n"
        "  image (may be empty for text-only), answer (a letter for multi-choice), question_type\n"
        "  (multi-choice|free-form), metadata (split, source, subject, subfield), query_wo, query_cot,\n"
        "  question_for_eval",
        "MathVerse_MINI", "index, image (base64), question, answer, question_for_eval, problem_version, metadata\n"
        "  (dict repr), [query_cot]")

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["MathVerse_MINI"], splits=[["testmini"]],
                             configs=["testmini"], exclude=["testmini_text_only", "testmini_version_split"],
                             hf_columns=["sample_index", "problem_version", "question", "image", "answer",
                                         "question_type", "query_wo", "question_for_eval"],
                             tsv_columns=["index", "image", "question", "answer", "question_for_eval",
                                          "problem_version"])
        samples = []
        for uid, image, row in source.each(key="sample_index", optional=True):
            answer = str(row["answer"]).strip()
            if source.kind == "tsv":
                question = str(row["question"])
                question_type = "multi-choice" if len(answer) == 1 and answer.isupper() else "free-form"
            else:
                question, question_type = str(row.get("query_wo") or row["question"]), str(row["question_type"])
            for_eval = str(row.get("question_for_eval") or row["question"])
            metadata = parse_dict(row.get("metadata"))
            samples.append(Sample(f"mathverse-{uid}", _blank() if image is None else image, question, answer, {
                "problem_version": str(row["problem_version"]), "question_type": question_type,
                "options": parse_options(for_eval), "subject": metadata.get("subject") or "",
                "raw_question": for_eval, "text_only": image is None,
            }))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        rules = [float(mathverse_match(p, str(s.answer), s.meta["question_type"], s.meta.get("options")))
                 for s, p in zip(samples, predictions, strict=True)]
        return rules_then_judge(self.name, samples, predictions, rules, judge,
                                [[s.meta["problem_version"], s.meta.get("subject", "")] for s in samples])
