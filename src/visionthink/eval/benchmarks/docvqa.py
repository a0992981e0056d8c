"""DocVQA validation (5,349): ANLS."""

from __future__ import annotations

import os

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks._io import (
    answers_of,
    check_predictions,
    group_scores,
    hf_image,
    mean,
    open_source,
    parse_list,
    tsv_image,
)
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.eval.metrics import anls
from visionthink.rewards.judge_base import Judge


class DocVQA(Benchmark):
    """ANLS (threshold 0.5) against every accepted answer; `score/<question type>` breakdowns."""

    name = "docvqa"
    layout = (
        "either the Hugging Face dataset lmms-lab/DocVQA (or lmms-lab-encoder/DocVQA), config DocVQA, as published:\n"
        "  <root>/DocVQA/validation-*.parquet  columns: questionId, question, question_types, image, docId,\n"
        "  ucsf_document_id, ucsf_document_page_no, answers (list), data_split\n"
        "or the VLMEvalKit TSV: <root>/DocVQA_VAL.tsv (or <root> = that file)\n"
        "  columns: index, image (base64), question, answer (Python-repr list, e.g. \"['0.28']\")"
    )
    post_prompt = "\nAnswer the question using a single word or phrase."

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, name=self.name, layout=self.layout, splits=[["validation"]],
                             tsv_names=["DocVQA_VAL"], configs=["DocVQA"], exclude=["InfographicVQA"],
                             hf_columns=["questionId", "question", "image", "answers"],
                             tsv_columns=["index", "image", "question", "answer"], limit=limit)
        samples = []
        for i, row in enumerate(source.rows):
            if source.kind == "tsv":
                uid, image, answers, types = row["index"], tsv_image(row, source.path, self.name), row["answer"], []
            else:
                uid, answers, types = row["questionId"], row["answers"], row.get("question_types") or []
                image = hf_image(row["image"], source.path, self.name, f"questionId {uid}")
            answer = answers_of(answers)
            if answers is None or answer in ("", []):
                raise VisionThinkError(f"{self.name}: question {uid} has no answers (the test split is unanswered; "
                                       f"use validation)")
            question = str(row["question"])
            samples.append(Sample(f"docvqa-{uid}", image, question + self.post_prompt, answer,
                                  {"question_types": parse_list(types) or [], "raw_question": question, "row": i}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [anls(p, s.answer) for s, p in zip(samples, predictions, strict=True)]
        summary: dict[str, float] = {"n": len(samples), "score": mean(per_sample), "anls": mean(per_sample)}
        summary.update(group_scores(per_sample, [s.meta.get("question_types", []) for s in samples]))
        return Scores(per_sample, summary)
