"""OCRBench (1,000): substring match, scored out of 1,000."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import answers_of, check_predictions, group_scores, mean, open_source
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import OCRBENCH_HME_CATEGORY, ocrbench_match
from visionthink.rewards.judge_base import Judge


class OCRBench(Benchmark):
    """Each item 0/1: an answer must be a substring of the prediction (HME100k: spaces removed, case kept).

    `score` = correct / n; `final_score` = the number correct (the paper's 0-1000 scale on the full set).
    """

    name = "ocrbench"
    layout = published(
        "echo840/OCRBench", "data/test-*.parquet",
        "dataset, question, question_type, answer (list), image",
        "OCRBench", "index, image (base64), question, answer (Python-repr list), category")
    post_prompt = ""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["OCRBench"],
                             hf_columns=["dataset", "question", "question_type", "answer", "image"],
                             tsv_columns=["index", "image", "question", "answer", "category"])
        samples = []
        for uid, image, row in source.each(hf={"category": "question_type"}):
            category, dataset = row["category"], row.get("dataset") or ""
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
