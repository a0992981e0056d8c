"""The score-vs-tokens curve of every tool threshold (`eval.curve`) and the eval options that use it."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from conftest import REPO  # tests/ is on sys.path

from visionthink import cli
from visionthink.eval import curve
from visionthink.eval.curve import Item


def _items(seed: int = 0, n: int = 60) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        needed = rng.random() < 0.4
        p = min(1.0, max(0.0, rng.gauss(0.8 if needed else 0.2, 0.2)))
        items.append(Item(round(p, 2), float(not needed or rng.random() < 0.2), float(rng.random() < 0.9), 6, 30, 24,
                          needed))
    return items


def test_auroc_counts_the_ordered_pairs():
    rng = random.Random(1)
    scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(40)]  # many ties
    labels = [rng.random() < 0.5 for _ in range(40)]
    pairs = [(s, t) for (s, a), (t, b) in itertools.product(zip(scores, labels, strict=True), repeat=2) if a and not b]
    expected = sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)
    assert curve.auroc(scores, labels) == pytest.approx(expected)
    assert curve.auroc([0.1, 0.9], [False, True]) == 1.0
    assert curve.auroc([0.3, 0.3], [False, False]) is None


def test_the_curve_runs_from_never_to_always_and_each_point_is_its_threshold():
    items = _items()
    points = curve.curve(items)
    assert points[0].threshold == math.inf and points[0].tool_ratio == 0.0
    assert points[-1].tool_ratio == 1.0
    assert points[0].token_fraction == pytest.approx(6 / 24) and points[-1].token_fraction == pytest.approx(30 / 24)
    fractions = [p.token_fraction for p in points]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    for point in points[1:]:
        tool = [i.p_tool >= point.threshold for i in items]
        score = sum(i.tool_score if t else i.answer_score for i, t in zip(items, tool, strict=True)) / len(items)
        assert point.score == pytest.approx(score)
        assert point == curve.point_at(items, point.threshold)


def test_random_calls_join_never_and_always():
    items = _items()
    never, always = curve.point_at(items, math.inf), curve.point_at(items, 0.0)
    middle = (never.token_fraction + always.token_fraction) / 2
    assert curve.random_score(items, middle) == pytest.approx((never.score + always.score) / 2)
    assert curve.margin_over_random(items, curve.curve(items)) >= 0.0  # P(tool) here is informative
    uninformed = [Item(1 - i.p_tool, i.answer_score, i.tool_score, 6, 30, 24, i.needs_high_res) for i in items]
    assert curve.margin_over_random(uninformed, curve.curve(uninformed)) < 0.0


def test_an_item_without_a_decision_keeps_its_own_episode():
    items = [Item(None, 1.0, 1.0, 30, 30, 24, True), Item(0.9, 0.0, 1.0, 6, 30, 24, True)]
    assert curve.point_at(items, 0.5).token_fraction == pytest.approx(60 / 48)
    assert curve.point_at(items, math.inf).token_fraction == pytest.approx(36 / 48)
    never = [{"p_tool": None, "score": 1.0, "visual_tokens": 30, "full_res_visual_tokens": 24}]
    always = [{"p_tool": None, "score": 0.0, "visual_tokens": 99, "full_res_visual_tokens": 24}]
    (item,) = curve.items_from(never, always, [None])
    assert (item.tool_score, item.tool_tokens) == (1.0, 30)  # both runs were the same episode: the first is kept


def test_choose_threshold_meets_the_budget_on_its_items():
    items = _items(n=400)
    chosen = curve.choose_threshold(items, 0.6)
    assert abs(chosen.token_fraction - 0.6) < 0.01
    assert curve.choose_threshold(items, 5.0).tool_ratio == 1.0
    assert curve.choose_threshold(items, 0.0).tool_ratio == 0.0


def test_summary_is_strict_json():
    result = curve.summarise_curve(_items())
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["never"]["threshold"] == "inf"
    assert result["oracle"]["tool_ratio"] == pytest.approx(sum(i.needs_high_res for i in _items()) / 60)


def _eval(out, *extra) -> int:
    return cli.main(["eval", "--bench", "synth-heldout", "--limit", "36", "--out", str(out), "--no-progress",
                     "--batch-size", "12", "--model", str(REPO / "checkpoints" / "tiny-synth"), *extra])


def test_eval_curve_predicts_a_threshold_run(tmp_path):
    assert _eval(tmp_path / "curve", "--modes", "visionthink", "--curve") == 0
    result = json.loads((tmp_path / "curve" / "curve.json").read_text())["synth-heldout"]
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 10_000
    assert result["n"] == result["decided"] == 36
    assert result["auroc_needs_high_res"] >= 0.95
    assert result["margin_over_random"] >= 0.0
    records = [json.loads(line) for line in (tmp_path / "curve" / "samples.jsonl").read_text().splitlines()]
    p_tools = sorted({r["p_tool"] for r in records if r["mode"] == curve.NEVER})
    gap, threshold = max((b - a, (a + b) / 2) for a, b in itertools.pairwise(p_tools))  # far from every item's P(tool)
    assert gap > 0.1
    threshold = round(threshold, 3)
    never = {r["uid"]: r for r in records if r["mode"] == curve.NEVER}
    always = {r["uid"]: r for r in records if r["mode"] == curve.ALWAYS}
    uids = sorted(never)
    predicted = curve.point_at(curve.items_from([never[u] for u in uids], [always[u] for u in uids],
                                                [never[u]["meta"]["needs_high_res"] for u in uids]), threshold)
    assert _eval(tmp_path / "steered", "--modes", "visionthink", "--tool-threshold", str(threshold)) == 0
    summary = json.loads((tmp_path / "steered" / "summary.json").read_text())["synth-heldout"]
    ran = summary[f"visionthink@T={threshold:g}"]
    assert ran["score"] == pytest.approx(predicted.score)
    assert ran["resize_ratio"] == pytest.approx(predicted.tool_ratio)
    assert ran["visual_tokens"] / ran["full_res_visual_tokens"] == pytest.approx(predicted.token_fraction)


def test_eval_token_budget_calibrates_then_runs_the_rest(tmp_path, capsys):
    assert _eval(tmp_path, "--modes", "low", "--token-budget", "0.5", "--calibration-fraction", "0.5") == 0
    budget = json.loads((tmp_path / "curve.json").read_text())["synth-heldout"]["token_budget"]
    assert budget["calibration_items"] + budget["test_items"] == 36
    assert budget["calibration_items"] > 5 and budget["test_items"] > 5
    assert abs(budget["calibration_token_fraction"] - 0.5) < 0.1
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    steered = [r for r in records if r["mode"] == budget["label"]]
    assert len(steered) == budget["test_items"]
    calibrated = {r["uid"] for r in records if r["mode"] == curve.NEVER}
    assert calibrated.isdisjoint(r["uid"] for r in steered)  # the test part is not the calibration part
    assert f"token budget 0.5 of full resolution: threshold {budget['threshold']}" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--curve"], ["--tool-threshold", "0.5"], ["--token-budget", "0.4"]])
def test_an_engine_that_cannot_steer_is_refused_before_any_work(tmp_path, capsys, flags):
    code = _eval(tmp_path / "out", "--modes", "visionthink", "--engine", "remote", "--base-url",
                 "http://127.0.0.1:9/v1", *flags)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --tool-threshold, --curve and --token-budget need the transformers engine, which reads "
                   "P(tool) while it decodes"]
    assert not (tmp_path / "out").exists()


def test_a_threshold_outside_0_1_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ask", "image.png", "q", "--tool-threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "1.5 is not in [0, 1]" in capsys.readouterr().err
