"""ChartQA test (2,500 = 1,250 human + 1,250 augmented): relaxed accuracy, or an LLM judge."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import (
    answers_of,
    ask_judge,
    check_predictions,
    clip01,
    group_scores,
    hf_image,
    mean,
    open_source,
    tsv_image,
)
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.eval.metrics import relaxed_accuracy
from visionthink.rewards.judge_base import Judge, JudgeRequest


def _split_name(value: object) -> str:
    text = str(value or "").lower()
    return "human" if "human" in text else "augmented" if "augment" in text else text


class ChartQA(Benchmark):
    """Relaxed accuracy (5% tolerance on non-zero numbers, case-insensitive equality otherwise).

    With a judge, `score` is the judge's mean (the paper judged ChartQA with an LLM because the
    relaxed float match mis-scores); `relaxed` always holds the rule-based figure.
    """

    name = "chartqa"
    layout = (
        "either the Hugging Face dataset lmms-lab/ChartQA (or lmms-lab-encoder/ChartQA) as published:\n"
        "  <root>/data/test-*.parquet  columns: type (human_test|augmented_test), question, answer, image\n"
        "or the VLMEvalKit TSV: <root>/ChartQA_TEST.tsv (or <root> = that file)\n"
        "  columns: index, image (base64), question, answer, split (test_human|test_augmented)"
    )
    post_prompt = "\nAnswer the question with a single word."
    """lmms-eval's ChartQA prompt suffix."""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, name=self.name, layout=self.layout, splits=[["test"]], tsv_names=["ChartQA_TEST"],
                             hf_columns=["type", "question", "answer", "image"],
                             tsv_columns=["index", "image", "question", "answer"], limit=limit)
        samples = []
        for i, row in enumerate(source.rows):
            if source.kind == "tsv":
                uid, image, split = f"chartqa-{row['index']}", tsv_image(row, source.path, self.name), row.get("split")
            else:
                uid, split = f"chartqa-{i}", row["type"]
                image = hf_image(row["image"], source.path, self.name, f"row {i}")
            question = str(row["question"])
            samples.append(Sample(uid, image, question + self.post_prompt, answers_of(row["answer"]),
                                  {"split": _split_name(split), "raw_question": question}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        relaxed = [relaxed_accuracy(p, s.answer) for s, p in zip(samples, predictions, strict=True)]
        per_sample = relaxed
        summary: dict[str, float] = {"n": len(samples), "relaxed": mean(relaxed)}
        if judge is not None:
            requests = [JudgeRequest(s.meta.get("raw_question", s.question), _truth(s.answer), p)
                        for s, p in zip(samples, predictions, strict=True)]
            verdicts = ask_judge(self.name, judge, requests)
            per_sample = [clip01(v.score) if v.ok else r for v, r in zip(verdicts, relaxed, strict=True)]
            summary["judge"] = mean(per_sample)
            summary["judge_failures"] = sum(not v.ok for v in verdicts)
        summary["score"] = mean(per_sample)
        summary.update(group_scores(per_sample, [[s.meta.get("split", "")] for s in samples]))
        return Scores(per_sample, summary)


def _truth(answer: str | list[str]) -> str:
    return answer if isinstance(answer, str) else " <OR> ".join(answer)
