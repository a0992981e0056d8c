"""`visionthink data curate`: labels from sampled rollouts at each resolution (paper section 3.5)."""

from __future__ import annotations

import json

import pytest
from datasets import DatasetDict, load_from_disk

from visionthink import cli
from visionthink.data.curate import (
    DISCARD,
    LOW_RES_ENOUGH,
    NEEDS_HIGH_RES,
    Curation,
    format_confusion,
    high_res_margin,
    label_item,
)
from visionthink.data.export import write_synth_dataset


@pytest.mark.parametrize(("low", "high", "label"), [
    (8, 8, LOW_RES_ENOUGH),
    (0, 6, NEEDS_HIGH_RES),  # exactly 6 more
    (2, 8, NEEDS_HIGH_RES),
    (0, 8, NEEDS_HIGH_RES),
    (1, 6, DISCARD),  # only 5 more
    (3, 8, DISCARD),
    (7, 8, DISCARD),  # not all correct at low res
    (8, 7, DISCARD),
    (0, 0, DISCARD),
    (8, 0, DISCARD),
])
def test_labels_for_k8(low, high, label):
    assert high_res_margin(8) == 6
    assert label_item(low, high, 8) == label


@pytest.mark.parametrize(("low", "high", "label"), [
    (4, 4, LOW_RES_ENOUGH),
    (0, 3, NEEDS_HIGH_RES),  # ceil(0.75 * 4) = 3 more
    (1, 4, NEEDS_HIGH_RES),
    (1, 3, DISCARD),
    (0, 2, DISCARD),
    (3, 4, DISCARD),
])
def test_labels_for_k4(low, high, label):
    assert high_res_margin(4) == 3
    assert label_item(low, high, 4) == label


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
    assert confusion["fine_small"] == {"true": {LOW_RES_ENOUGH: 0, NEEDS_HIGH_RES: 1, DISCARD: 1}}
    assert confusion["coarse"] == {"false": {LOW_RES_ENOUGH: 2, NEEDS_HIGH_RES: 1, DISCARD: 0}}
    assert confusion["all"]["false"][LOW_RES_ENOUGH] == 2 and list(confusion)[-1] == "all"
    text = format_confusion(curation)
    lines = text.splitlines()
    assert "-> needs_high_res" in lines[0]
    coarse = next(line for line in lines if line.startswith("coarse"))
    assert coarse.split() == ["coarse", "needs_high_res=false", "2", "1", "0", "3", "33.3"]
    assert curation.summary()["labels"] == {LOW_RES_ENOUGH: 2, NEEDS_HIGH_RES: 2, DISCARD: 1}


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
    assert isinstance(curated, DatasetDict) and set(curated) == {"train", "discarded"}
    assert len(curated["train"]) + len(curated["discarded"]) == 12
    rows = [row for split in curated.values() for row in split.remove_columns("image")]
    assert sorted(row["uid"] for row in rows) == sorted(f"s1-{i}" for i in range(12))
    for row in rows:
        assert row["k"] == 2 and 0 <= row["low_correct"] <= 2 and 0 <= row["high_correct"] <= 2
        assert row["label"] == label_item(row["low_correct"], row["high_correct"], 2)
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

    from visionthink.data.curate import rollout_answers

    class Flaky:
        def run(self, requests, mode, progress=None):
            if any(r == "bad" for r in requests):
                raise ValueError("image_pad tokens and images differ")
            return [SimpleNamespace(answer=f"{mode}:{r}") for r in requests]

    failures: list[str] = []
    assert rollout_answers(Flaky(), ["a", "bad", "c"], "low", failures) == ["low:a", None, "low:c"]
    assert len(failures) == 2 and failures[0].startswith("batch low: ValueError")
    assert failures[1].startswith("rollout low: ValueError")
    assert rollout_answers(Flaky(), ["a"], "full") == ["full:a"]
