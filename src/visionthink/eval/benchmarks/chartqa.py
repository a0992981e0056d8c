"""ChartQA test (2,500 = 1,250 human + 1,250 augmented): relaxed accuracy, or an LLM judge."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import answers_of, check_predictions, group_scores, mean, open_source, regrade
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import relaxed_accuracy
from visionthink.rewards.judge_base import Judge


def _split_name(value: object) -> str:
    text = str(value or "").lower()
    return "human" if "human" in text else "augmented" if "augment" in text else text


class ChartQA(Benchmark):
    """Relaxed accuracy (5% tolerance on non-zero numbers, case-insensitive equality otherwise).

    With a judge, `score` is the judge's mean (the paper judged ChartQA with an LLM because the
    relaxed float match mis-scores); `relaxed` always holds the rule-based figure.
    """

    name = "chartqa"
    layout = published(
        "lmms-lab/ChartQA (or lmms-lab-encoder/ChartQA)", "data/test-*.parquet",
        "type (human_test|augmented_test), question, answer, image",
        "ChartQA_TEST", "index, image (base64), question, answer, split (test_human|test_augmented)")
    post_prompt = "\nAnswer the question with a single word."
    """lmms-eval's ChartQA prompt suffix."""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["ChartQA_TEST"],
                             hf_columns=["type", "question", "answer", "image"],
                             tsv_columns=["index", "image", "question", "answer"])
        samples = []
        for uid, image, row in source.each(hf={"split": "type"}):
            question = str(row["question"])
            samples.append(Sample(f"chartqa-{uid}", image, question + self.post_prompt, answers_of(row["answer"]),
                                  {"split": _split_name(row.get("split")), "raw_question": question}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = relaxed = [relaxed_accuracy(p, s.answer) for s, p in zip(samples, predictions, strict=True)]
        summary: dict[str, float] = {"n": len(samples), "relaxed": mean(relaxed)}
        if judge is not None:
            per_sample, failures = regrade(self.name, judge, samples, predictions, relaxed, range(len(samples)))
            summary.update(judge=mean(per_sample), judge_failures=failures)
        summary["score"] = mean(per_sample)
        summary.update(group_scores(per_sample, [[s.meta.get("split", "")] for s in samples]))
        return Scores(per_sample, summary)
