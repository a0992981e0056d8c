"""RealWorldQA (765): option letter or short answer, exact after extraction."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import check_predictions, mean, open_source
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import realworldqa_match
from visionthink.grading import parse_options
from visionthink.rewards.judge_base import Judge

LETTER_INSTRUCTION = "Please answer directly with only the letter of the correct option and nothing else."


class RealWorldQA(Benchmark):
    """Accuracy with lmms-eval's rule (`metrics.realworldqa_match`): by default lmms-eval 75571cf
    (since #1274): an A-D answer needs `extract_mcq_answer`'s letter (`metrics.lmms_mcq_letter`), any
    other `pred.lower().strip().rstrip('.') == answer.lower()`. `rule = "lmms-eval-legacy"` scores
    as lmms-eval did before #1274 (the VisionThink era): number words, option text -> letter, then
    exact match ignoring case and punctuation."""

    name = "realworldqa"
    layout = published(
        "lmms-lab/RealWorldQA (or lmms-lab-encoder/RealWorldQA)", "data/test-*.parquet",
        "image, question (options inline as \"\\nA. ...\" lines and the\n"
        "  answering instruction), answer, [image_path]",
        "RealWorldQA", "index, image (base64), question, answer (letter), A, B, C, [D]")
    rule = "lmms-eval"

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["RealWorldQA"], hf_columns=["image", "question", "answer"],
                             tsv_columns=["index", "image", "question", "answer", "A", "B"])
        samples = []
        for uid, image, row in source.each():
            if source.kind == "tsv":
                options = {k: str(row[k]) for k in "ABCDEFGH" if (row.get(k) or "").strip()}
                lines = "".join(f"\n{k}. {v}" for k, v in options.items())
                question = f"{str(row['question']).strip()}{lines}\n{LETTER_INSTRUCTION}"
            else:
                uid, question = row.get("image_path") or uid, str(row["question"])
                options = parse_options(question)
            samples.append(Sample(f"realworldqa-{uid}", image, question, str(row["answer"]).strip(),
                                  {"options": options}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [float(realworldqa_match(p, str(s.answer), s.meta.get("options"), rule=self.rule))
                      for s, p in zip(samples, predictions, strict=True)]
        return Scores(per_sample, {"n": len(samples), "score": mean(per_sample)})
