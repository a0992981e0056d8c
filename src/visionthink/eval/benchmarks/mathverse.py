"""MathVerse testmini (3,940 = 788 problems x 5 versions): answer extraction then match."""

from __future__ import annotations

import os

from PIL import Image

from visionthink.eval.benchmarks._io import (
    check_predictions,
    group_scores,
    hf_image,
    judge_misses,
    mean,
    open_source,
    parse_dict,
    tsv_image,
)
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
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
    layout = (
        "either the Hugging Face dataset CaraJ/MathVerse-lmmseval, config testmini, as published:\n"
        "  <root>/testmini/testmini-*.parquet  columns: sample_index, problem_index, problem_version, question,\n"
        "  image (may be empty for text-only), answer (a letter for multi-choice), question_type\n"
        "  (multi-choice|free-form), metadata (split, source, subject, subfield), query_wo, query_cot,\n"
        "  question_for_eval\n"
        "or the VLMEvalKit TSV: <root>/MathVerse_MINI.tsv (or <root> = that file)\n"
        "  columns: index, image (base64), question, answer, question_for_eval, problem_version, metadata\n"
        "  (dict repr), [query_cot]"
    )

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, name=self.name, layout=self.layout, splits=[["testmini"]],
                             tsv_names=["MathVerse_MINI"], configs=["testmini"],
                             exclude=["testmini_text_only", "testmini_version_split"],
                             hf_columns=["sample_index", "problem_version", "question", "image", "answer",
                                         "question_type", "query_wo", "question_for_eval"],
                             tsv_columns=["index", "image", "question", "answer", "question_for_eval",
                                          "problem_version"], limit=limit)
        samples = []
        for row in source.rows:
            answer = str(row["answer"]).strip()
            text_only = False
            if source.kind == "tsv":
                uid, image = row["index"], tsv_image(row, source.path, self.name)
                question = str(row["question"])
                question_type = "multi-choice" if len(answer) == 1 and answer.isupper() else "free-form"
            else:
                uid = row["sample_index"]
                cell = row.get("image")
                text_only = cell is None or (isinstance(cell, (str, dict)) and not _has_image(cell))
                image = _blank() if text_only else hf_image(cell, source.path, self.name, f"sample_index {uid}")
                question = str(row.get("query_wo") or row["question"])
                question_type = str(row["question_type"])
            for_eval = str(row.get("question_for_eval") or row["question"])
            metadata = parse_dict(row.get("metadata"))
            samples.append(Sample(f"mathverse-{uid}", image, question, answer, {
                "problem_version": str(row["problem_version"]), "question_type": question_type,
                "options": parse_options(for_eval), "subject": metadata.get("subject") or "",
                "raw_question": for_eval, "text_only": text_only,
            }))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [float(mathverse_match(p, str(s.answer), s.meta["question_type"], s.meta.get("options")))
                      for s, p in zip(samples, predictions, strict=True)]
        summary: dict[str, float] = {"n": len(samples), "rules": mean(per_sample)}
        per_sample = judge_misses(self.name, samples, predictions, per_sample, judge, summary)
        summary["score"] = mean(per_sample)
        summary.update(group_scores(per_sample, [[s.meta["problem_version"], s.meta.get("subject", "")]
                                                 for s in samples]))
        return Scores(per_sample, summary)


def _has_image(cell: str | dict) -> bool:
    if isinstance(cell, dict):
        return bool(cell.get("bytes")) or bool(str(cell.get("path") or "").strip())
    return bool(cell.strip())
