"""The project's synthetic world as a benchmark: normalised exact match, per family."""

from __future__ import annotations

import os
import re

from visionthink.data import synth
from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks._io import check_predictions, group_scores, hf_image, mean, open_source
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.grading import grade_answer
from visionthink.rewards.judge_base import Judge

BUILTIN = "builtin"
DEFAULT_SIZE = 600
COLUMNS = ["image", "question", "answer", "family", "question_type", "needs_high_res", "uid"]


class Synth(Benchmark):
    """Held-out synthetic test items; `score/<family>` for coarse, fine_small, fine_large."""

    name = "synth"
    wordings = "train"
    """The question wording set of the generated items (`synth.split_items(..., wordings=)`)."""
    generated = True
    """The runner may pass root None (generate) when no folder exists."""
    reads_folder = True
    """False: the runner always generates, even when a folder of this name exists."""
    layout = (
        "a folder written by `visionthink data synth --out <root>` (datasets.save_to_disk of a DatasetDict\n"
        "  with a `test` split; columns: image, question, answer, family, question_type, needs_high_res, uid),\n"
        f"or root None / \"{BUILTIN}\" to generate synth.split_items(\"test\", limit or {DEFAULT_SIZE}, seed=0)"
    )

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        if root is None or str(root) == BUILTIN:
            return self.generate(limit)
        source = open_source(root, self, limit, tsv_names=[], hf_columns=COLUMNS, tsv_columns=COLUMNS)
        return [Sample(str(row["uid"]), hf_image(row["image"], source.path, self.name, f"uid {row['uid']}"),
                       str(row["question"]), str(row["answer"]),
                       {"family": str(row["family"]), "needs_high_res": bool(row["needs_high_res"]),
                        "question_type": str(row["question_type"]),
                        "right_action": synth.RIGHT_ACTION.get(str(row["family"]))})
                for row in source.rows]

    def items(self, n: int) -> list[synth.Item]:
        """The first `n` generated test items of seed 0, in this benchmark's wordings."""
        return synth.split_items("test", n, seed=0, wordings=self.wordings)

    def generate(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` (default 600) test items of seed 0, asked in this benchmark's wordings."""
        items = self.items(DEFAULT_SIZE if limit is None else limit)
        return [Sample(item.uid, item.image, item.question, item.answer,
                       {"family": item.family, "needs_high_res": item.needs_high_res,
                        "question_type": item.question_type, "right_action": item.right_action}) for item in items]

    uid_pattern = r"s(\d+)-(\d+)"

    def regenerate(self, stream: int, index: int) -> synth.Item:
        return synth.make_item(stream, index)

    def label_box(self, sample: Sample) -> tuple[int, int, int, int] | None:
        """The label's true box (x1, y1, x2, y2 in image pixels, x2/y2 exclusive) for the zooming oracles, from the
        generator: items are deterministic in (stream, index), which the uid (`uid_pattern`) names (a saved folder
        keeps it). None for another uid, or when the regenerated item's answer differs. Each item is regenerated
        once (eval asks for a box when it checks an oracle, builds its requests and scores each zoom)."""
        match = re.fullmatch(self.uid_pattern, str(sample.uid))
        if match is None:
            return None
        key = (int(match[1]), int(match[2]))
        known = self.__dict__.setdefault("_boxes", {})
        if key not in known:
            item = self.regenerate(*key)
            known[key] = (item.answer, None if item.label_box is None else tuple(int(v) for v in item.label_box))
        answer, box = known[key]
        return box if answer == str(sample.answer) else None

    def score(self, samples: list[Sample], predictions: list[str | None], judge: Judge | None = None) -> Scores:
        check_predictions(self.name, samples, predictions)
        per_sample = [float(grade_answer(str(s.answer), p, s.question)[0])  # the rule judge's grade
                      for s, p in zip(samples, predictions, strict=True)]
        summary: dict[str, float] = {"n": len(samples), "score": mean(per_sample)}
        summary.update(group_scores(per_sample, [[s.meta.get("family", "")] for s in samples]))
        return Scores(per_sample, summary)


class SynthHeldout(Synth):
    """The `synth` test images and answers, asked in held-out wordings the model never trained on."""

    name = "synth-heldout"
    wordings = "heldout"
    reads_folder = False
    layout = (
        f"none: always generated, synth.split_items(\"test\", limit or {DEFAULT_SIZE}, seed=0, wordings=\"heldout\")\n"
        "  (the same images as the built-in `synth`, questions in wordings no training ever sees)"
    )

    def load(self, root: str | os.PathLike | None, limit: int | None = None) -> list[Sample]:
        if root is not None and str(root) != BUILTIN:
            raise VisionThinkError(f"{self.name} reads no folder (got {root}); it is generated.\n"
                                   f"Expected layout: {self.layout}")
        return self.generate(limit)


class SynthHeldoutTemplates(SynthHeldout):
    """The `synth` test images and answers, asked in held-out sentence structures (`synth.HELDOUT_TEMPLATES`)."""

    name = "synth-heldout-templates"
    wordings = "heldout-templates"
    layout = (
        f"none: always generated, synth.split_items(\"test\", limit or {DEFAULT_SIZE}, seed=0, "
        "wordings=\"heldout-templates\")\n  (the same images as `synth`, questions in sentence structures no training "
        "sees)"
    )


class Ladder(SynthHeldout):
    """The ladder world's test items (issue 27): coarse, large-label, small-label and spread-label questions in
    `synth.LADDER_MIX`, each with its `right_action`; `score/<family>` per family."""

    name = "ladder"
    wordings = "train"
    layout = (f"none: always generated, synth.ladder_items(\"test\", limit or {DEFAULT_SIZE}, seed=0) "
              "in the trained wordings")
    uid_pattern = r"l(\d+)-(\d+)"

    def items(self, n: int) -> list[synth.Item]:
        return synth.ladder_items("test", n, seed=0, wordings=self.wordings)

    def regenerate(self, stream: int, index: int) -> synth.Item:
        return synth.make_ladder_item(stream, index)


class LadderHeldout(Ladder):
    """The `ladder` test images, asked in held-out wordings of the trained templates."""

    name = "ladder-heldout"
    wordings = "heldout"
    layout = (f"none: always generated, synth.ladder_items(\"test\", limit or {DEFAULT_SIZE}, seed=0, "
              "wordings=\"heldout\")")


class LadderHeldoutTemplates(Ladder):
    """The `ladder` test images, asked in held-out sentence structures (`synth.HELDOUT_TEMPLATES`)."""

    name = "ladder-heldout-templates"
    wordings = "heldout-templates"
    layout = (f"none: always generated, synth.ladder_items(\"test\", limit or {DEFAULT_SIZE}, seed=0, "
              "wordings=\"heldout-templates\")")


class LadderValidation(Ladder):
    """The ladder world's validation items (other images than the test split's), in the trained wordings: what a
    threshold is chosen on (`eval --escalate-budget`, `--token-budget`) before the test benches run with it."""

    name = "ladder-validation"
    layout = (f"none: always generated, synth.ladder_items(\"validation\", limit or {DEFAULT_SIZE}, seed=0) "
              "in the trained wordings")

    def items(self, n: int) -> list[synth.Item]:
        return synth.ladder_items("validation", n, seed=0, wordings=self.wordings)
