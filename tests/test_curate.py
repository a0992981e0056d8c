"""`visionthink data curate`: labels from sampled rollouts at each resolution (paper section 3.5)."""

from __future__ import annotations

import json

import pytest
from datasets import DatasetDict, load_from_disk

from visionthink import cli
from visionthink.data.curate import (
    CUT,
    DISCARD,
    LOW_RES_ENOUGH,
    NEEDS_HIGH_RES,
    Curation,
    format_confusion,
    high_res_margin,
    label_item,
    label_with_cuts,
)
from visionthink.data.export import write_synth_dataset


@pytest.mark.parametrize(("k", "low", "high", "label"), [
    (8, 8, 8, LOW_RES_ENOUGH),
    (8, 0, 6, NEEDS_HIGH_RES),  # k = 8: exactly 6 more
    (8, 2, 8, NEEDS_HIGH_RES),
    (8, 0, 8, NEEDS_HIGH_RES),
    (8, 1, 6, DISCARD),  # only 5 more
    (8, 3, 8, DISCARD),
    (8, 7, 8, DISCARD),  # not all correct at low res
    (8, 8, 7, DISCARD),
    (8, 0, 0, DISCARD),
    (8, 8, 0, DISCARD),
    (4, 4, 4, LOW_RES_ENOUGH),
    (4, 0, 3, NEEDS_HIGH_RES),  # k = 4: ceil(0.75 * 4) = 3 more
    (4, 1, 4, NEEDS_HIGH_RES),
    (4, 1, 3, DISCARD),
    (4, 0, 2, DISCARD),
    (4, 3, 4, DISCARD),
])
def test_labels_for_k8_and_k4(k, low, high, label):
    """The margins (6 of 8, 3 of 4) are `test_margin_scales_with_k_and_counts_are_checked`'s."""
    assert label_item(low, high, k) == label


def test_margin_scales_with_k_and_counts_are_checked():
    assert [high_res_margin(k) for k in (1, 2, 3, 4, 8, 16)] == [1, 2, 3, 3, 6, 12]
    assert label_item(0, 2, 2) == NEEDS_HIGH_RES and label_item(1, 2, 2) == DISCARD
    with pytest.raises(ValueError):
        label_item(9, 8, 8)
    with pytest.raises(ValueError):
        high_res_margin(0)


def test_confusion_table_hand_made():
    curation = Curation(
        k=4, low_correct=[4, 0, 1, 4, 0], high_correct=[4, 4, 1, 4, 3],
        labels=[LOW_RES_ENOUGH, NEEDS_HIGH_RES, DISCARD, LOW_RES_ENOUGH, NEEDS_HIGH_RES],
        families=["coarse", "fine_small", "fine_small", "coarse", "coarse"],
        needs_high_res=[False, True, True, False, False])
    confusion = curation.confusion()
    assert confusion["fine_small"] == {"true": {LOW_RES_ENOUGH: 0, NEEDS_HIGH_RES: 1, DISCARD: 1, CUT: 0}}
    assert confusion["coarse"] == {"false": {LOW_RES_ENOUGH: 2, NEEDS_HIGH_RES: 1, DISCARD: 0, CUT: 0}}
    assert confusion["all"]["false"][LOW_RES_ENOUGH] == 2 and list(confusion)[-1] == "all"
    text = format_confusion(curation)
    lines = text.splitlines()
    assert "-> needs_high_res" in lines[0]
    coarse = next(line for line in lines if line.startswith("coarse"))
    assert coarse.split() == ["coarse", "needs_high_res=false", "2", "1", "0", "0", "3", "33.3"]
    assert curation.summary()["labels"] == {LOW_RES_ENOUGH: 2, NEEDS_HIGH_RES: 2, DISCARD: 1, CUT: 0}
    assert curation.items() == {"kept": 4, "cut": 0, "wrong": 1}


def test_an_empty_split_saves_and_loads(tmp_path):
    from datasets import Dataset

    from visionthink.data.curate import save_splits

    rows = Dataset.from_dict({"uid": ["a", "b"], "label": [LOW_RES_ENOUGH, NEEDS_HIGH_RES]})
    save_splits(DatasetDict({"train": rows.select([0, 1]), "discarded": rows.select([])}), tmp_path / "out")
    loaded = load_from_disk(str(tmp_path / "out"))
    assert len(loaded["train"]) == 2 and len(loaded["discarded"]) == 0
    assert loaded["discarded"].column_names == ["uid", "label"]


def test_curate_cli_on_a_tiny_synth_folder(tmp_path, shipped_model_dir, capsys):
    data = write_synth_dataset(tmp_path / "synth", 12, 0, ["train"])
    out = tmp_path / "curated"
    code = cli.main(["data", "curate", "--model", str(shipped_model_dir), "--data", str(data), "--k", "2",
                     "--out", str(out), "--limit", "12", "--seed", "1", "--batch-size", "24", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "needs_high_res=true" in printed and "fine_small" in printed and f"wrote {out}" in printed
    curated = load_from_disk(str(out))
    assert isinstance(curated, DatasetDict) and set(curated) == {"train", "cut", "discarded"}
    assert len(curated["train"]) + len(curated["cut"]) + len(curated["discarded"]) == 12
    rows = [row for split in curated.values() for row in split.remove_columns("image")]
    assert sorted(row["uid"] for row in rows) == sorted(f"s1-{i}" for i in range(12))
    for row in rows:
        assert row["k"] == 2 and 0 <= row["low_correct"] <= 2 and 0 <= row["high_correct"] <= 2
        assert row["label"] == label_with_cuts(row["low_correct"], row["high_correct"], row["low_cut"],
                                               row["high_cut"], 2)
    assert set(curated["train"]["label"]) <= {LOW_RES_ENOUGH, NEEDS_HIGH_RES}
    assert set(curated["discarded"]["label"]) <= {DISCARD}
    assert curated["train"].features["image"].__class__.__name__ == "Image"
    report = json.loads((out / "curation.json").read_text())
    assert report["k"] == 2 and report["items"] == 12
    assert sum(sum(cell.values()) for cell in report["confusion"]["all"].values()) == 12
    assert {family: sum(sum(c.values()) for c in cells.values())
            for family, cells in report["confusion"].items() if family != "all"} == {
        "coarse": 4, "fine_small": 4, "fine_large": 4}


def test_curate_missing_split_is_a_clear_error(tmp_path, capsys):
    data = write_synth_dataset(tmp_path / "synth", 3, 0, ["test"])
    code = cli.main(["data", "curate", "--data", str(data), "--out", str(tmp_path / "out"), "--k", "2"])
    assert code == 2
    assert "no split 'train'" in capsys.readouterr().err


def test_a_rollout_that_cannot_run_counts_as_wrong():
    from types import SimpleNamespace

    from visionthink.data.curate import rollout_outcomes

    class Flaky:
        def run(self, requests, mode, progress=None):
            if any(r == "bad" for r in requests):
                raise ValueError("image_pad tokens and images differ")
            return [SimpleNamespace(answer=f"{mode}:{r}") for r in requests]

    failures: list[str] = []
    assert [o.answer for o in rollout_outcomes(Flaky(), ["a", "bad", "c"], "low", failures)] == ["low:a", None, "low:c"]
    assert len(failures) == 2 and failures[0].startswith("batch low: ValueError")
    assert failures[1].startswith("rollout low: ValueError")
    assert [o.answer for o in rollout_outcomes(Flaky(), ["a"], "full")] == ["full:a"]


@pytest.mark.parametrize(("low", "high", "low_cut", "high_cut", "label"), [
    (2, 2, 0, 0, LOW_RES_ENOUGH),
    (0, 0, 0, 0, DISCARD),
    (0, 0, 0, 1, DISCARD),  # even if the cut one were right: 1 more of 2 is not enough
    (0, 0, 0, 2, CUT),  # both cut at full resolution: needs_high_res or discard
    (1, 2, 1, 0, CUT),  # low_res_enough or discard
    (0, 1, 1, 1, CUT),
    (0, 2, 0, 0, NEEDS_HIGH_RES),
    (0, 2, 1, 0, CUT),  # the cut low-res one decides needs_high_res or discard
])
def test_labels_with_cut_rollouts_for_k2(low, high, low_cut, high_cut, label):
    assert label_with_cuts(low, high, low_cut, high_cut, 2) == label


def test_label_with_cuts_checks_counts():
    with pytest.raises(ValueError):
        label_with_cuts(2, 0, 1, 0, 2)
    assert label_with_cuts(8, 8, 0, 0, 8) == label_item(8, 8, 8)


def test_a_cut_turn_is_found_from_fed_ids_or_the_budget():
    from types import SimpleNamespace

    from visionthink.data.curate import turn_was_cut

    stops = [7, 8]
    assert not turn_was_cut(SimpleNamespace(fed_token_ids=[1, 2, 7], generated_tokens=3), stops, 3)
    assert turn_was_cut(SimpleNamespace(fed_token_ids=[1, 2, 5], generated_tokens=2), stops, 3)
    # no fed ids (vLLM, remote: only the server's usage): a turn that used its whole budget
    assert turn_was_cut(SimpleNamespace(fed_token_ids=[], generated_tokens=256), stops, 256)
    assert not turn_was_cut(SimpleNamespace(fed_token_ids=[], generated_tokens=40), stops, 256)


def test_cut_rollouts_are_neither_graded_nor_judged():
    from visionthink.data.curate import Outcome, grade
    from visionthink.rewards.judge_base import Judge, Verdict

    class Yes(Judge):
        asked: list = []

        def grade(self, requests):
            Yes.asked.extend(requests)
            return [Verdict(1.0, ok=r.prediction != "down") for r in requests]

    outcomes = [Outcome("1"), Outcome("1", cut=True), Outcome("x"), Outcome(None)]
    assert grade(outcomes, ["q1", "q2"], ["1", "2"], 2) == ([True, False, False, False], 0)
    grades, failed = grade(outcomes + [Outcome("down")], ["q1", "q2", "q3"], ["1", "2", "3"], 2, Yes())
    assert grades == [True, False, True, False, True] and failed == 1
    assert [(r.question, r.prediction) for r in Yes.asked] == [("q1", "1"), ("q2", "x"), ("q3", "down")]


class _StubEngine:
    """Rollouts without a model: the answer is right for even items; item 1's full-resolution turns hit the budget."""

    def __init__(self):
        from visionthink.engines.kv_decoder import SamplingConfig

        self.sampling = SamplingConfig(max_new_tokens=16)
        self.stop_ids = [99]

    def run(self, requests, mode, progress=None):
        from types import SimpleNamespace

        episodes = []
        for request in requests:
            index = int(request.question.split()[-1])
            cut = index == 1 and mode == "full"
            episodes.append(SimpleNamespace(answer=None if cut else str(index if index % 2 == 0 else -1),
                                            fed_token_ids=[5, 6] if cut else [5, 99], generated_tokens=16 if cut else 2,
                                            size=request.image.size))
        return episodes


def test_curate_sets_cut_items_apart_and_clamps_images(tmp_path, monkeypatch):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    from visionthink.data import curate as curate_module
    from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS

    sizes = [(100, 80), (3000, 2000), (600, 500), (5000, 4000)]
    rows = Dataset.from_dict({"image": [Image.new("RGB", size, "white") for size in sizes],
                              "question": [f"item {i}" for i in range(4)], "answer": [str(i) for i in range(4)]},
                             features=Features({"image": ImageFeature(), "question": Value("string"),
                                                "answer": Value("string")}))
    rows.save_to_disk(str(tmp_path / "data"))
    seen = []
    engine = _StubEngine()
    original = engine.run

    def run(requests, mode, progress=None):
        seen.extend(r.image.size for r in requests)
        return original(requests, mode, progress)

    monkeypatch.setattr(engine, "run", run)
    curation = curate_module.curate(None, tmp_path / "data", tmp_path / "out", k=2, engine=engine, progress=False,
                                    pixel_range=(RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS))
    assert curation.labels == [LOW_RES_ENOUGH, CUT, LOW_RES_ENOUGH, DISCARD]
    assert curation.items() == {"kept": 2, "cut": 1, "wrong": 1}
    assert curation.rollouts() == {"total": 16, "correct": 8, "cut": 2, "wrong": 6}
    assert curation.max_new_tokens == 16 and "kept 2, cut 1" in curation.counts_line()
    for width, height in seen:
        assert RELEASE_MIN_PIXELS * 0.99 <= width * height <= RELEASE_MAX_PIXELS
    assert (600, 500) in seen  # in range: as it was
    report = json.loads((tmp_path / "out" / "curation.json").read_text())
    assert report["kept_cut_wrong"] == {"kept": 2, "cut": 1, "wrong": 1}
    assert report["pixel_range"] == [RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS]
    saved = load_from_disk(str(tmp_path / "out"))
    assert {name: len(split) for name, split in saved.items()} == {"train": 2, "cut": 1, "discarded": 1}
    assert saved["cut"][0]["high_cut"] == 2 and saved["cut"][0]["question"] == "item 1"


def test_curate_cli_pixel_range_option():
    from visionthink.cli import _pixel_range
    from visionthink.errors import VisionThinkError
    from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS

    assert _pixel_range("auto", "release") == (RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS)
    assert _pixel_range("auto", None) is None and _pixel_range("none", "release") is None
    assert _pixel_range("release", None) == (512 * 512, 2048 * 2048)
    assert _pixel_range("1000,2000", None) == (1000, 2000)
    for bad in ("2000,1000", "a,b", "0,5"):
        with pytest.raises(VisionThinkError):
            _pixel_range(bad, None)
