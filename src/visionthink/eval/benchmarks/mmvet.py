"""MM-Vet (218): graded by an LLM judge (0.0-1.0 per answer), per-capability breakdowns."""

from __future__ import annotations

import os

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks._io import check_predictions, group_scores, mean, open_source, parse_list, regrade
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.rewards.judge_base import Judge


def _capabilities(cell: object) -> list[str]:
    listed = parse_list(cell)
    if listed is None:
        listed = str(cell or "").split(",")
    return [c.strip() for c in listed if c.strip()]


class MMVet(Benchmark):
    """The judge's grade per answer (an ungradable answer scores 0, as in the reference), mean in
    `score`; `score/<capability>` for rec/ocr/know/gen/spat/math; `judge_failures` counts the 0s
    that came from a failing judge. Without a judge, scoring raises (and `visionthink eval` refuses
    to start, `needs_judge`)."""

    name = "mmvet"
    needs_judge = True
    layout = published(
        "lmms-lab/MMVet (or lmms-lab-encoder/MMVet)", "data/test-*.parquet",
        "question_id (v1_0...), image, question, answer (may hold\n"
        "  <AND>/<OR>), image_source, capability (comma-joined, e.g. ocr,math)",
        "MMVet", "index, image (base64), question, answer, category (comma-joined capabilities)")
    pre_prompt = ("First please perform reasoning, and think step by step to provide best answer to the "
                  "following question: \n\n")
    """lmms-eval's MM-Vet pre-prompt."""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["MMVet"],
                             hf_columns=["question_id", "image", "question", "answer", "capability"],
                             tsv_columns=["index", "image", "question", "answer", "category"])
        samples = []
        for uid, image, row in source.each(key="question_id", hf={"category": "capability"}):
            question = str(row["question"])
            samples.append(Sample(f"mmvet-{uid}", image, self.pre_prompt + question, str(row["answer"]),
                                  {"capabilities": _capabilities(row["category"]), "raw_question": question}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        if judge is None:
            raise VisionThinkError("mmvet: MM-Vet is graded by an LLM judge (the official GPT grader); pass a judge "
                                   "(visionthink.rewards.judge_base.Judge) to score it")
        per_sample, failures = regrade(self.name, judge, samples, predictions, [0.0] * len(samples),
                                       range(len(samples)))
        summary: dict[str, float] = {"n": len(samples), "score": mean(per_sample), "judge_failures": failures}
        summary.update(group_scores(per_sample, [s.meta.get("capabilities", []) for s in samples]))
        return Scores(per_sample, summary)
