"""POPE (9,000 = 3 x 3,000 on COCO val2014): F1 with "yes" as positive, plus accuracy and yes-ratio."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import LMMS_SHORT_ANSWER, check_predictions, open_source
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import pope_metrics, pope_yes_no
from visionthink.rewards.judge_base import Judge


class POPE(Benchmark):
    """`score` is F1 (what VisionThink reports); also accuracy, precision, recall, yes_ratio, and
    `score/<category>` (F1 per adversarial/popular/random). Answers are read and aggregated with the
    official POPE rule by default (an empty answer reads "yes" there); `rule = "lmms-eval"` reads
    only the exact words and aggregates as lmms-eval 75571cf does (`metrics.pope_metrics`)."""

    name = "pope"
    layout = published(
        "lmms-lab/POPE (or lmms-lab-encoder/POPE)",
        "data/test-*.parquet (default config) or <root>/Full/{adversarial,popular,random}-*.parquet\n",
        "id, question_id, question, answer (yes|no), image_source, image, category",
        "POPE", "index, image (base64), question, answer (Yes|No), category (may be comma-joined)")
    post_prompt = LMMS_SHORT_ANSWER
    rule = "official"

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["POPE"],
                             splits=[["test"], ["adversarial", "popular", "random"]],
                             hf_columns=["question_id", "question", "answer", "image", "category"],
                             tsv_columns=["index", "image", "question", "answer", "category"])
        samples = []
        for i, (uid, image, row) in enumerate(source.each(key="question_id", hf={"image_path": "image_source"})):
            if source.kind == "tsv":
                categories = [c.strip() for c in str(row["category"]).split(",") if c.strip()]
            else:
                uid, categories = f"{row['__split__']}-{row.get('id', i)}", [str(row["category"])]
            question = str(row["question"])
            samples.append(Sample(f"pope-{uid}", image, question + self.post_prompt, str(row["answer"]).strip().lower(),
                                  {"categories": categories, "image_source": row.get("image_path") or "",
                                   "raw_question": question}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        labels = [pope_yes_no(p, self.rule) for p in predictions]
        truths = [str(s.answer).strip().lower() for s in samples]
        per_sample = [float(label == truth) for label, truth in zip(labels, truths, strict=True)]
        overall = pope_metrics(truths, labels, self.rule)
        summary: dict[str, float] = {"n": len(samples), "score": overall["f1"], **overall}
        categories = sorted({c for s in samples for c in s.meta.get("categories", [])})
        for category in categories:
            chosen = [i for i, s in enumerate(samples) if category in s.meta.get("categories", [])]
            summary[f"score/{category}"] = pope_metrics([truths[i] for i in chosen], [labels[i] for i in chosen],
                                                        self.rule)["f1"]
        return Scores(per_sample, summary)
