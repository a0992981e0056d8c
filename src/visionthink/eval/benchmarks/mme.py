"""MME (2,374 questions = 1,187 images x 2): acc + acc+ per category, perception and cognition sums."""

from __future__ import annotations

import os

from visionthink.eval.benchmarks._io import LMMS_SHORT_ANSWER, check_predictions, open_source
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores, published
from visionthink.eval.metrics import mme_category_kind, mme_scores, mme_yes_no
from visionthink.rewards.judge_base import Judge


class MME(Benchmark):
    """MME's official score on the paper scale, and `score` = total / (200 x categories present).

    An answer is parsed with lmms-eval's rule (`mme_yes_no`); the two questions of an image are
    grouped by `question_id` (HF) or `image_path` / the shared image row (TSV). Summary keys:
    `score`, `perception` (max 2000), `cognition` (max 800), `total`, `max_total`, `accuracy`,
    `points/<category>` (max 200) and `score/<category>` (points / 200).
    """

    name = "mme"
    layout = published(
        "lmms-lab/MME (or lmms-lab-encoder/MME)", "data/test-*.parquet",
        "question_id (image key, shared by its 2 questions), image,\n"
        "  question, answer (Yes|No), category",
        "MME", "index, image (base64, or the index of the row holding it), question, answer (Yes|No),\n"
        "  category, [image_path]")
    replace_prompt = " Please answer yes or no."
    post_prompt = LMMS_SHORT_ANSWER
    """lmms-eval replaces `replace_prompt` with `post_prompt`."""

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        """The questions under `root`; `limit` counts questions but never splits an image's pair: the
        first images (in file order) are taken whole until at least `limit` questions are in, so acc+
        stays defined (a limit of 3 gives 4 questions)."""
        if limit is None or limit <= 0:
            return self._read(root, limit)
        window = 2 * limit + 2  # the published layouts keep a pair on adjacent rows
        while True:
            samples = self._read(root, window)
            whole = _whole_images(samples, limit, complete=len(samples) < window)
            if len(whole) >= limit or len(samples) < window:
                return whole
            window *= 4  # pairs further apart than the window: read more

    def _read(self, root: str | os.PathLike | None, limit: int | None) -> list[Sample]:
        source = open_source(root, self, limit, tsv_names=["MME"],
                             hf_columns=["question_id", "image", "question", "answer", "category"],
                             tsv_columns=["index", "image", "question", "answer", "category"])
        samples = []
        for i, (uid, image, row) in enumerate(source.each(key="question_id")):
            if source.kind == "tsv":
                image_id = row.get("image_path") or row["__image_key__"]
            else:
                image_id, uid = str(uid), f"{uid}#{i}"
            raw = str(row["question"]).strip()
            question = raw.replace(self.replace_prompt, "") + self.post_prompt if self.post_prompt else raw
            category = str(row["category"])
            samples.append(Sample(f"mme-{uid}", image, question, str(row["answer"]).strip(),
                                  {"category": category, "image_id": str(image_id), "raw_question": raw,
                                   "kind": mme_category_kind(category)}))
        return samples

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [float(mme_yes_no(p) == str(s.answer).strip().lower())
                      for s, p in zip(samples, predictions, strict=True)]
        if not samples:
            return Scores([], {"n": 0, "score": 0.0, "perception": 0.0, "cognition": 0.0, "total": 0.0})
        result = mme_scores([s.meta["category"] for s in samples], [s.meta["image_id"] for s in samples],
                            [ok == 1.0 for ok in per_sample])
        summary: dict[str, float] = {"n": len(samples), "score": result["total"] / result["max_total"],
                                     "accuracy": sum(per_sample) / len(per_sample)}
        summary.update(result)
        summary.update({f"score/{k.removeprefix('points/')}": v / 200.0 for k, v in result.items()
                        if k.startswith("points/")})
        return Scores(per_sample, summary)


def _whole_images(samples: list[Sample], limit: int, complete: bool) -> list[Sample]:
    """The samples of the first images (by first appearance) until at least `limit` questions are in.

    When the rows were not all read (`complete` False), an image with a single question may have its
    partner further on, so it is skipped rather than split.
    """
    by_image: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        by_image.setdefault(sample.meta["image_id"], []).append(index)
    chosen: set[int] = set()
    for indices in by_image.values():
        if len(chosen) >= limit:
            break
        if len(indices) < 2 and not complete:
            continue
        chosen.update(indices)
    return [sample for index, sample in enumerate(samples) if index in chosen]
