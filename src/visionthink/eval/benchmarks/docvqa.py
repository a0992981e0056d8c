"""DocVQA validation (5,349): ANLS."""

from __future__ import annotations

import os

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks._io import (
    LMMS_SHORT_ANSWER,
    answers_of,
    check_predictions,
    group_scores,
    mean,
    open_source,
    parse_list,
)
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import anls
from visionthink.rewards.judge_base import Judge


class DocVQA(Benchmark):
    """ANLS (threshold 0.5) against every accepted answer; `score/<question type>` breakdowns."""

    name = "docvqa"
    layout = published(
        "lmms-lab/DocVQA (or lmms-lab-encoder/DocVQA), config DocVQA,", "DocVQA/validation-*.parquet",
        "questionId, question, question_types, image, docId,\n"
        "  ucsf_document_id, ucsf_document_page_no, answers (list), data_split",
        "DocVQA_VAL", "index, image (base64), question, answer (Python-repr list, e.g. \"['0.28']\")")
    post_prompt = LMMS_SHORT_ANSWER

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["DocVQA_VAL"], splits=[["validation"]], configs=["DocVQA"],
                             exclude=["InfographicVQA"], hf_columns=["questionId", "question", "image", "answers"],
                             tsv_columns=["index", "image", "question", "answer"])
        samples = []
        for i, (uid, image, row) in enumerate(source.each(key="questionId", hf={"answer": "answers"})):
            types = [] if source.kind == "tsv" else row.get("question_types") or []
            answer = answers_of(row["answer"])
            if row["answer"] is None or answer in ("", []):
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
