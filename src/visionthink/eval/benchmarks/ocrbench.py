"""OCRBench (1,000): substring match, scored out of 1,000."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import (
    answers_of,
    check_predictions,
    group_scores,
    hf_image,
    mean,
    open_source,
    tsv_image,
)
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.eval.metrics import OCRBENCH_HME_CATEGORY, ocrbench_match
from visionthink.rewards.judge_base import Judge


class OCRBench(Benchmark):
    """Each item 0/1: an answer must be a substring of the prediction (HME100k: spaces removed, case kept).

    `score` = correct / n; `final_score` = the number correct (the paper's 0-1000 scale on the full set).
    """

    name = "ocrbench"
    layout = (
        "either the Hugging Face dataset echo840/OCRBench as published:\n"
        "  <root>/data/test-*.parquet  columns: dataset, question, question_type, answer (list), image\n"
        "or the VLMEvalKit TSV: <root>/OCRBench.tsv (or <root> = that file)\n"
        "  columns: index, image (base64), question, answer (Python-repr list), category"
    )
    post_prompt = ""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, name=self.name, layout=self.layout, splits=[["test"]], tsv_names=["OCRBench"],
                             hf_columns=["dataset", "question", "question_type", "answer", "image"],
                             tsv_columns=["index", "image", "question", "answer", "category"], limit=limit)
        samples = []
        for i, row in enumerate(source.rows):
            if source.kind == "tsv":
                uid, image = row["index"], tsv_image(row, source.path, self.name)
                category, dataset = row["category"], row.get("dataset") or ""
            else:
                uid, category, dataset = str(i), row["question_type"], row["dataset"] or ""
                image = hf_image(row["image"], source.path, self.name, f"row {i}")
            hme = dataset == "HME100k" or category == OCRBENCH_HME_CATEGORY
            question = str(row["question"])
            samples.append(Sample(f"ocrbench-{uid}", image, question + self.post_prompt, answers_of(row["answer"]),
                                  {"category": category, "dataset": dataset, "hme": hme, "raw_question": question}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [float(ocrbench_match(p, s.answer, hme=bool(s.meta.get("hme"))))
                      for s, p in zip(samples, predictions, strict=True)]
        summary: dict[str, float] = {"n": len(samples), "score": mean(per_sample), "final_score": sum(per_sample)}
        summary.update(group_scores(per_sample, [[s.meta.get("category", "")] for s in samples]))
        return Scores(per_sample, summary)
