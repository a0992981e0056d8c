"""`visionthink eval`: the real CLI on the synthetic world, resuming after a kill, and the metric helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from numpy import percentile

from visionthink import protocol
from visionthink.errors import ImageError, VisionThinkError
from visionthink.eval import runner
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.eval.report import table2
from visionthink.eval.runner import EvalConfig, run_eval
from visionthink.eval.samples_log import SampleLog, read_samples
from visionthink.eval.summary import mode_metrics, paired_difference, resize_precision_recall, tokens_per_second
from visionthink.tools import ToolCall

ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
FAMILIES = ("coarse", "fine_small", "fine_large")


def eval_command(model: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "visionthink", "eval", "--model", str(model), "--bench", "synth",
            "--out", str(out), *args]


def complete_lines(path: Path) -> list[bytes]:
    """The lines of a samples log that were fully written (a kill can tear the last one)."""
    lines = path.read_bytes().split(b"\n")[:-1] if path.is_file() else []
    good = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        good.append(line)
    return good


# ---------------------------------------------------------------- the real CLI


@pytest.fixture(scope="module")
def synth_eval(tmp_path_factory, shipped_model_dir):
    out = tmp_path_factory.mktemp("eval") / "report"
    result = subprocess.run(
        eval_command(shipped_model_dir, out, "--modes", "full,low,visionthink,oracle", "--limit", "12", "--json",
                     "--batch-size", "8"),
        capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result.stderr


@pytest.mark.slow
def test_eval_writes_the_report(synth_eval):
    out, _, stderr = synth_eval
    for name in ("samples.jsonl", "summary.json", "run.json", "report.md", "score_vs_visual_tokens.png",
                 "resize_ratio.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "score_vs_visual_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 12
    assert len({(r["bench"], r["mode"], r["uid"]) for r in records}) == 48
    for record in records:
        assert set(record) >= {"bench", "mode", "uid", "question", "truth", "prediction", "score", "resized",
                               "visual_tokens", "full_res_visual_tokens", "generated_tokens", "seconds", "meta"}
        assert record["score"] in (0.0, 1.0)
        assert set(record["meta"]) >= {"family", "needs_high_res"}
        full = record["full_res_visual_tokens"]
        assert full in (16, 24)  # world v2's 112x112, 168x112 and 112x168 images
        expected_tokens = full if record["mode"] == "full" else (full * 5 // 4 if record["resized"] else full // 4)
        assert record["visual_tokens"] == expected_tokens
    report = (out / "report.md").read_text()
    assert "| mode | synth |" in report and "| visionthink |" in report and "% tok)" in report
    assert "synth/full" in stderr  # progress bars
    # each mode against full resolution, item by item, from the same records
    summary = json.loads((out / "summary.json").read_text())["synth"]
    full = {r["uid"]: r["score"] for r in records if r["mode"] == "full"}
    assert "vs_full" not in summary["full"]
    for mode in ("low", "visionthink", "oracle"):
        differences = [r["score"] - full[r["uid"]] for r in records if r["mode"] == mode]
        assert summary[mode]["vs_full"]["n"] == 12
        assert summary[mode]["vs_full"]["difference"] == pytest.approx(sum(differences) / 12)
    assert "## Against full resolution, item by item" in report and "| low | " in report


@pytest.mark.slow
def test_eval_json_shape_and_ranges(synth_eval):
    out, summary, _ = synth_eval
    assert summary == json.loads((out / "summary.json").read_text())
    assert list(summary) == ["synth"] and list(summary["synth"]) == ["full", "low", "visionthink", "oracle"]
    for mode, metrics in summary["synth"].items():
        assert set(metrics) >= {"score", "visual_tokens", "resize_ratio", "seconds", "per_family"}
        assert 0 <= metrics["score"] <= 1 and 0 <= metrics["resize_ratio"] <= 1
        assert metrics["seconds"] > 0 and metrics["seconds_mean"] == pytest.approx(metrics["seconds"] / 12)
        # batches of 8: per-item times are shares, so no per-item percentiles; the batches' wall times instead
        assert metrics["timing"] == "batch_share" and "batch" in metrics["timing_note"]
        assert metrics["seconds_p50"] is None and metrics["seconds_p95"] is None
        assert metrics["batches"] == 2 and 0 < metrics["batch_seconds_p50"] <= metrics["batch_seconds_p95"]
        assert metrics["tokens_per_second"] > 0
        assert metrics["n"] == 12
        assert set(metrics["per_family"]) == set(FAMILIES)
        assert sum(f["n"] for f in metrics["per_family"].values()) == 12
        for family in metrics["per_family"].values():
            assert 0 <= family["score"] <= 1 and 0 <= family["resize_ratio"] <= 1
            assert family["seconds"] > 0 and family["seconds_mean"] == pytest.approx(family["seconds"] / family["n"])
            assert family["seconds_p50"] is None and family["seconds_p95"] is None
        for key in ("resize_precision", "resize_recall"):
            assert metrics[key] is None or 0 <= metrics[key] <= 1, (mode, key)
    full, low, oracle = summary["synth"]["full"], summary["synth"]["low"], summary["synth"]["oracle"]
    assert 16 <= full["visual_tokens"] <= 24 and full["visual_tokens_pct_of_full"] == 100
    assert low["visual_tokens"] == 0.25 * full["visual_tokens"]
    assert low["resize_ratio"] == 0 and full["resize_ratio"] == 0
    # the oracle resizes exactly the fine_small items
    assert oracle["per_family"]["fine_small"]["resize_ratio"] == 1
    assert oracle["per_family"]["coarse"]["resize_ratio"] == 0
    assert oracle["resize_precision"] == 1 and oracle["resize_recall"] == 1


@pytest.mark.slow
def test_killed_eval_resumes_without_recomputing(tmp_path, shipped_model_dir):
    out = tmp_path / "report"
    command = eval_command(shipped_model_dir, out, "--modes", "full,low", "--limit", "16", "--no-progress")
    expected = 2 * 16
    samples = out / "samples.jsonl"
    process = subprocess.Popen(command + ["--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=ENV)
    try:
        deadline = time.monotonic() + 240
        while len(complete_lines(samples)) < 3:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no samples written in time"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    before = complete_lines(samples)
    assert 3 <= len(before) < expected, "the eval finished before it could be killed"
    assert not (out / "summary.json").exists()

    rerun = subprocess.run(command + ["--batch-size", "8", "--json"], capture_output=True, text=True, timeout=300,
                           env=ENV)
    assert rerun.returncode == 0, rerun.stderr
    after = complete_lines(samples)
    assert samples.read_bytes().endswith(b"\n")
    assert after[: len(before)] == before  # finished samples untouched
    assert len(after) == expected  # nothing duplicated, nothing missing
    keys = [tuple(json.loads(line)[k] for k in ("bench", "mode", "uid")) for line in after]
    assert len(set(keys)) == expected
    run = json.loads((out / "run.json").read_text())
    assert sum(run["computed"].values()) == expected - len(before)  # only the missing ones were run
    summary = json.loads(rerun.stdout)
    assert [metrics["n"] for metrics in summary["synth"].values()] == [16, 16]
    # some samples ran alone, the rest in batches of 8: per-item times are not all measured
    assert {metrics["timing"] for metrics in summary["synth"].values()} == {"batch_share"}


@pytest.mark.slow
def test_eval_batch_size_one_measures_each_item(tmp_path, shipped_model_dir):
    out = tmp_path / "report"
    result = subprocess.run(eval_command(shipped_model_dir, out, "--modes", "low,visionthink", "--limit", "6",
                                         "--batch-size", "1", "--json", "--no-progress"),
                            capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["batch_size"] for r in records} == {1} and len({r["batch_id"] for r in records}) == 12
    for mode, metrics in summary["synth"].items():
        mine = [r for r in records if r["mode"] == mode]
        walls = [r["batch_seconds"] for r in mine]
        assert metrics["timing"] == "measured" and metrics["batches"] == 6
        assert metrics["seconds"] == pytest.approx(sum(walls))
        assert metrics["seconds_p50"] == pytest.approx(percentile(walls, 50))
        assert metrics["seconds_p95"] == pytest.approx(percentile(walls, 95))
        assert 0 < metrics["seconds_p50"] <= metrics["seconds_p95"]
        for record in mine:  # the item's wall time covers its episode's own account of its time
            assert record["batch_seconds"] >= 0.9 * record["seconds"] > 0
        for name, family in metrics["per_family"].items():
            own = [r["batch_seconds"] for r in mine if r["meta"]["family"] == name]
            assert family["seconds"] == pytest.approx(sum(own))
            assert family["seconds_p50"] == pytest.approx(percentile(own, 50))
            assert family["seconds_p95"] == pytest.approx(percentile(own, 95))
    report = (out / "report.md").read_text()
    assert "| measured |" in report and "Time per family (synth):" in report


# ---------------------------------------------------------------- helpers against hand-computed values


def test_paired_difference_is_the_mean_gap_and_its_standard_error():
    paired = paired_difference([1, 1, 0, 1], [1, 0, 1, 1])  # differences 0, 1, -1, 0
    assert paired["difference"] == 0 and paired["n"] == 4
    assert paired["standard_error"] == pytest.approx((2 / 3 / 4) ** 0.5)
    assert paired_difference([0, 0, 0], [1, 1, 1]) == {"difference": -1.0, "standard_error": 0.0, "n": 3}
    assert paired_difference([1], [0])["standard_error"] == 0.0
    with pytest.raises(ValueError, match="2 scores against 1"):
        paired_difference([1, 0], [1])


def test_tokens_per_second_and_resize_precision_recall():
    assert tokens_per_second(100, 4.0) == 25.0
    assert tokens_per_second(5, 0.0) == 0.0
    resized = [True, True, False, False, True]
    needed = [True, False, True, False, True]
    assert resize_precision_recall(resized, needed) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert resize_precision_recall([False, False], [True, False]) == (None, 0.0)
    assert resize_precision_recall([True], [False]) == (0.0, None)


class ExactBench(Benchmark):
    """A stand-in benchmark: exact string match, a family and a needs_high_res label per sample."""

    name = "fake"

    def __init__(self, n: int = 6, labelled: bool = True):
        self.n, self.labelled = n, labelled

    def load(self, root, limit=None):
        samples = []
        for i in range(min(limit or self.n, self.n)):
            meta = {"family": FAMILIES[i % 3]}
            if self.labelled:
                meta["needs_high_res"] = i % 3 == 1
            samples.append(Sample(f"q{i}", b"", f"question {i}", f"a{i}", meta))
        return samples

    def score(self, samples, predictions, judge=None):
        per = [float(p == s.answer) for s, p in zip(samples, predictions, strict=True)]
        return Scores(per, {"score": sum(per) / len(per) if per else 0.0, "correct": float(sum(per))})


def test_mode_metrics_hand_values():
    bench = ExactBench(4)
    samples = bench.load(None)
    records = [
        {"prediction": "a0", "seconds": 0.1, "visual_tokens": 4, "full_res_visual_tokens": 16,
         "generated_tokens": 10, "resized": False, "well_formed": True},
        {"prediction": "no", "seconds": 0.2, "visual_tokens": 20, "full_res_visual_tokens": 16,
         "generated_tokens": 20, "resized": True, "well_formed": True},
        {"prediction": "a2", "seconds": 0.3, "visual_tokens": 20, "full_res_visual_tokens": 16,
         "generated_tokens": 30, "resized": True, "well_formed": False},
        {"prediction": None, "seconds": 0.4, "visual_tokens": 4, "full_res_visual_tokens": 16,
         "generated_tokens": 40, "resized": False, "well_formed": False},
    ]
    for i, record in enumerate(records):  # each ran alone: its batch's wall time is its own
        record.update(batch_id=f"b{i}", batch_size=1, batch_seconds=record["seconds"])
    m = mode_metrics(bench, samples, records)
    assert m["n"] == 4 and m["score"] == 0.5 and m["official"] == {"correct": 2.0}
    assert m["visual_tokens"] == 12 and m["visual_tokens_pct_of_full"] == 75
    assert m["resize_ratio"] == 0.5
    assert m["seconds"] == pytest.approx(1.0)
    assert m["seconds_p50"] == pytest.approx(0.25) and m["seconds_p95"] == pytest.approx(0.385)
    assert m["tokens_per_second"] == pytest.approx(100.0)  # 100 tokens in 1.0 s
    assert m["generated_tokens"] == 25 and m["well_formed"] == 0.5 and m["answered"] == 0.75
    assert m["no_answer"] == 1  # a log without `answer_error` falls back to the missing prediction
    # needs_high_res: only q1 (fine_small); resized: q1 and q2
    assert m["resize_precision"] == 0.5 and m["resize_recall"] == 1.0
    families = m["per_family"]
    assert {f: families[f]["n"] for f in families} == {"coarse": 2, "fine_small": 1, "fine_large": 1}
    assert families["coarse"]["score"] == 0.5 and families["coarse"]["resize_ratio"] == 0.0
    assert families["fine_small"]["score"] == 0.0 and families["fine_small"]["resize_recall"] == 1.0
    assert families["fine_large"]["resize_precision"] == 0.0
    assert m["timing"] == "measured" and m["batches"] == 4 and m["seconds_mean"] == pytest.approx(0.25)
    # coarse: q0 (0.1 s) and q3 (0.4 s)
    assert families["coarse"]["seconds"] == pytest.approx(0.5) and families["coarse"]["seconds_mean"] == 0.25
    assert families["coarse"]["seconds_p50"] == pytest.approx(0.25)
    assert families["coarse"]["seconds_p95"] == pytest.approx(0.385)  # 0.1 + 0.95 * 0.3
    assert families["fine_small"]["seconds_p95"] == pytest.approx(0.2)


def test_mode_metrics_in_batches_gives_batch_walls_not_item_percentiles():
    bench = ExactBench(6)
    samples = bench.load(None)
    # batch A (4 items, 1.0 s wall) and batch B (2 items, 0.3 s wall); `seconds` are each item's share
    shares = [0.2, 0.3, 0.2, 0.3, 0.1, 0.2]
    records = [{"prediction": f"a{i}", "seconds": share, "visual_tokens": 4, "full_res_visual_tokens": 16,
                "generated_tokens": 5, "resized": False, "well_formed": True, "batch_id": "A" if i < 4 else "B",
                "batch_size": 4 if i < 4 else 2, "batch_seconds": 1.0 if i < 4 else 0.3}
               for i, share in enumerate(shares)]
    m = mode_metrics(bench, samples, records)
    assert m["timing"] == "batch_share" and "shares of a batch's wall time (up to 4 items" in m["timing_note"]
    assert m["timing_note"].endswith("wall time per batch: p50 0.650 s, p95 0.965 s")
    assert m["seconds"] == pytest.approx(1.3) and m["seconds_mean"] == pytest.approx(1.3 / 6)
    assert m["seconds_p50"] is None and m["seconds_p95"] is None
    assert m["batches"] == 2 and m["batch_seconds_mean"] == pytest.approx(0.65)
    assert m["batch_seconds_p50"] == pytest.approx(0.65) and m["batch_seconds_p95"] == pytest.approx(0.965)
    assert m["tokens_per_second"] == pytest.approx(30 / 1.3)
    coarse = m["per_family"]["coarse"]  # q0 and q3: shares 0.2 + 0.3
    assert coarse["seconds"] == pytest.approx(0.5) and coarse["seconds_mean"] == pytest.approx(0.25)
    assert coarse["seconds_p50"] is None and coarse["seconds_p95"] is None
    # a batch only partly in the summary (a smaller --limit on resume) counts pro rata
    part = mode_metrics(bench, samples[:2], records[:2])
    assert part["seconds"] == pytest.approx(0.5) and part["batches"] == 1
    # logs written before batch timing: episode time, and never called measured
    old = [{k: v for k, v in r.items() if not k.startswith("batch")} for r in records]
    m = mode_metrics(bench, samples, old)
    assert m["timing"] == "batch_share" and m["seconds"] == pytest.approx(1.3) and m["batches"] == 0
    assert m["seconds_p50"] is None and m["batch_seconds_p50"] is None
    from visionthink.eval.report import details_table, family_time_table

    row = details_table({"fake": {"low": mode_metrics(bench, samples, records)}}).splitlines()[-1]
    assert "| batch shares | - | - | 2 | 0.6500 | 0.9650 |" in row
    table = family_time_table("fake", {"low": mode_metrics(bench, samples, records)}, ["coarse"])
    assert "| low | coarse | 2 | batch shares | 0.50 | 0.2500 | - | - |" in table


# ---------------------------------------------------------------- the runner in-process, with a fake engine


class FakeEngine:
    """Answers `a<i>` for even questions, resizes in visionthink mode; counts the requests it ran. With `broken`,
    question 3's image cannot be read (a batch holding it fails as a whole); the questions in `unanswered` end in a
    turn with no <answer> and no tool call."""

    def __init__(self, broken: bool = False, unanswered: tuple[str, ...] = ()):
        self.ran: list[tuple[str, str]] = []
        self.broken, self.unanswered = broken, unanswered

    def run(self, requests, mode, progress=None):
        if self.broken and any(r.question == "question 3" for r in requests):
            raise ImageError("batch has a broken image" if len(requests) > 1 else "question 3: corrupt image")
        episodes = []
        for request in requests:
            if mode == "oracle":
                assert request.needs_high_res is not None
            index = int(request.question.split()[-1])
            self.ran.append((mode, request.question))
            resized = mode == "visionthink" or (mode == "oracle" and request.needs_high_res)
            episodes.append(protocol.Episode(
                messages=[], answer=f"a{index}" if index % 2 == 0 else "wrong", turns=[],
                calls=[ToolCall("resize_image", {"action": "resize"})] if resized else [],
                visual_tokens_per_turn=[16] if mode == "full" else ([4, 16] if resized else [4]),
                full_res_visual_tokens=16, generated_tokens=5, seconds={"turn1": 0.01 * (index + 1)}, mode=mode))
            if request.question in self.unanswered:
                episodes[-1].answer, episodes[-1].turns = None, [protocol.parse_turn("<think>hmm</think>")]
        if progress is not None:
            progress.update(len(requests))
        return episodes


def _config(out: Path, modes: list[str], **kwargs) -> EvalConfig:
    return EvalConfig(model=None, benches=["fake"], modes=modes, out=out, progress=False, **kwargs)


def test_runner_resumes_and_skips_oracle_without_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_load_benchmark", lambda name: ExactBench(6, labelled=False))
    engine = FakeEngine()
    result = run_eval(_config(tmp_path, ["full", "oracle"], batch_size=4), engine=engine, log=lambda m: None)
    assert list(result.summary["fake"]) == ["full"]
    assert any("oracle mode skipped" in note for note in result.notes)
    assert "oracle mode skipped" in (tmp_path / "report.md").read_text()
    assert len(engine.ran) == 6 and result.summary["fake"]["full"]["score"] == 0.5
    assert "resize_precision" not in result.summary["fake"]["full"]
    # a second run with one more mode only runs that mode
    engine = FakeEngine()
    result = run_eval(_config(tmp_path, ["full", "low"], batch_size=4), engine=engine, log=lambda m: None)
    assert {mode for mode, _ in engine.ran} == {"low"} and len(engine.ran) == 6
    assert json.loads((tmp_path / "run.json").read_text())["computed"] == {"fake/full": 0, "fake/low": 6}
    assert result.summary["fake"]["low"]["visual_tokens"] == 4
    assert "| full | 50.0 (100% tok) |" in table2(result.summary)
    with pytest.raises(VisionThinkError, match="holds results of model"):  # never mix two models' samples
        run_eval(EvalConfig(model="another", benches=["fake"], modes=["full"], out=tmp_path, progress=False),
                 engine=FakeEngine(), log=lambda m: None)


def test_runner_counts_broken_images_and_samples_without_an_answer(tmp_path, monkeypatch):
    """Question 3's image is broken (its batch is run again item by item), questions 1 and 4 end unanswered."""
    monkeypatch.setattr(runner, "_load_benchmark", lambda name: ExactBench(6))
    engine = FakeEngine(broken=True, unanswered=("question 1", "question 4"))
    result = run_eval(_config(tmp_path, ["oracle", "full", "low"], batch_size=4), engine=engine, log=lambda m: None)
    oracle = result.summary["fake"]["oracle"]
    assert oracle["n"] == 6 and oracle["resize_precision"] == 1 and oracle["resize_recall"] == 1
    for mode in ("full", "low"):
        metrics = result.summary["fake"][mode]
        assert (metrics["no_answer"], metrics["errors"], metrics["n"]) == (2, 1, 6)
        assert metrics["score"] == pytest.approx(2 / 6)  # a0 and a2 right; q4 had no answer, q3 did not run
    broken = [r for r in read_samples(tmp_path / "samples.jsonl") if r["uid"] == "q3"]
    assert len(broken) == 3 and all(r["prediction"] is None and "corrupt" in r["error"] and r["score"] == 0
                                    for r in broken)
    records = {r["uid"]: r for r in read_samples(tmp_path / "samples.jsonl") if r["mode"] == "full"}
    assert records["q1"]["answer_error"] == "final turn malformed: no <answer> and no tool call"
    assert records["q1"]["score"] == 0 and records["q0"]["answer_error"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["fake"]["low"]["no_answer"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "| no answer |" in report and "| fake | full | 6 |" in report
    row = next(line for line in report.splitlines() if line.startswith("| fake | full |"))
    assert row.rstrip(" |").endswith("| 2")


class Clock:
    """A fake wall clock that the engine below advances by 0.1 s x (question number + 1) per item."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _timed_engine(clock: Clock, batch_size: int):
    class Timed(FakeEngine):
        def __init__(self):
            super().__init__()
            self.batch_size = batch_size
            self.calls: list[int] = []

        def run(self, requests, mode, progress=None):
            self.calls.append(len(requests))
            clock.now += sum(0.1 * (int(r.question.split()[-1]) + 1) for r in requests)
            return super().run(requests, mode, progress)

    return Timed()


def test_runner_batch_size_one_measures_each_items_wall_time(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_load_benchmark", lambda name: ExactBench(6))
    clock = Clock()
    monkeypatch.setattr(runner, "clock", clock)
    engine = _timed_engine(clock, 1)
    result = run_eval(_config(tmp_path, ["low"], batch_size=1), engine=engine, log=lambda m: None)
    assert engine.calls == [1] * 6
    m = result.summary["fake"]["low"]
    # items 0-5 took 0.1 ... 0.6 s each
    assert m["timing"] == "measured" and m["batches"] == 6
    assert m["seconds"] == pytest.approx(2.1) and m["seconds_mean"] == pytest.approx(0.35)
    assert m["seconds_p50"] == pytest.approx(0.35) and m["seconds_p95"] == pytest.approx(0.575)
    families = m["per_family"]  # coarse: q0, q3 (0.1, 0.4); fine_small: q1, q4 (0.2, 0.5)
    assert families["coarse"]["seconds"] == pytest.approx(0.5)
    assert families["coarse"]["seconds_p95"] == pytest.approx(0.385)
    assert families["fine_small"]["seconds_mean"] == pytest.approx(0.35)
    assert families["fine_large"]["seconds_p50"] == pytest.approx(0.45)  # q2, q5: 0.3, 0.6
    report = (tmp_path / "report.md").read_text()
    assert "every item ran alone" in report
    assert "| low | coarse | 2 | measured | 0.50 | 0.2500 | 0.2500 | 0.3850 |" in report


def test_runner_batches_follow_the_engine_and_report_batch_wall_times(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_load_benchmark", lambda name: ExactBench(6))
    clock = Clock()
    monkeypatch.setattr(runner, "clock", clock)
    engine = _timed_engine(clock, 4)  # an engine batch smaller than --batch-size: one chunk per engine batch
    result = run_eval(_config(tmp_path, ["low"], batch_size=32), engine=engine, log=lambda m: None)
    assert engine.calls == [4, 2]
    m = result.summary["fake"]["low"]
    assert m["timing"] == "batch_share" and m["seconds_p50"] is None and m["seconds_p95"] is None
    assert m["batches"] == 2 and m["seconds"] == pytest.approx(2.1)
    assert m["batch_seconds_p50"] == pytest.approx(1.05) and m["batch_seconds_p95"] == pytest.approx(1.095)
    records = read_samples(tmp_path / "samples.jsonl")
    assert [r["batch_size"] for r in records] == [4, 4, 4, 4, 2, 2]
    assert [r["batch_seconds"] for r in records] == pytest.approx([1.0] * 4 + [1.1] * 2)
    report = (tmp_path / "report.md").read_text()
    assert "batch shares" in report and "not a measurement" in report and "--batch-size 1" in report


def test_runner_times_each_sample_alone_after_a_batch_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_load_benchmark", lambda name: ExactBench(4))
    clock = Clock()
    monkeypatch.setattr(runner, "clock", clock)

    class Slow(FakeEngine):  # a second of wall time per item
        def run(self, requests, mode, progress=None):
            clock.now += 1.0 * len(requests)
            return super().run(requests, mode, progress)

    result = run_eval(_config(tmp_path, ["low"], batch_size=4), engine=Slow(broken=True), log=lambda m: None)
    records = read_samples(tmp_path / "samples.jsonl")
    assert [r["batch_size"] for r in records] == [1] * 4 and [r["batch_seconds"] for r in records] == [1.0] * 4
    assert result.summary["fake"]["low"]["timing"] == "measured"


def test_samples_log_drops_torn_and_duplicate_lines(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [{"bench": "b", "mode": "full", "uid": str(i), "x": i} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + json.dumps(good[0]) + "\n"
                    + '{"bench": "b", "mode": "full", "uid": "3", "x')
    log = SampleLog(path)
    assert [r["uid"] for r in log.records] == ["0", "1", "2"]
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good)
    log.append([{"bench": "b", "mode": "full", "uid": "3"}, {"bench": "b", "mode": "full", "uid": "0"}])
    assert [r["uid"] for r in read_samples(path)] == ["0", "1", "2", "3"]
    assert log.done("b", "full", "3") and not log.done("b", "low", "3")


def test_runner_reports_synth_and_synth_heldout_side_by_side(tmp_path):
    (tmp_path / "data" / "synth-heldout").mkdir(parents=True)  # ignored: synth-heldout is always generated
    seen: dict[str, list[str]] = {}

    class Echo(FakeEngine):
        """Answers 'dots' to everything; records the questions per mode."""

        def run(self, requests, mode, progress=None):
            seen.setdefault(mode, []).extend(r.question for r in requests)
            return [protocol.Episode(messages=[], answer="dots", turns=[],
                                     visual_tokens_per_turn=[4], full_res_visual_tokens=16, mode=mode)
                    for _ in requests]

    logged: list[str] = []
    config = EvalConfig(model=None, benches=["synth", "synth-heldout"], modes=["low"], out=tmp_path / "out",
                        limit=6, data_root=tmp_path / "data", progress=False)
    result = run_eval(config, engine=Echo(), log=logged.append)
    assert list(result.summary) == ["synth", "synth-heldout"]
    assert result.summary["synth"]["low"]["n"] == result.summary["synth-heldout"]["low"]["n"] == 6
    assert len(seen["low"]) == 12 and seen["low"][:6] != seen["low"][6:]
    assert "| mode | synth | synth-heldout |" in table2(result.summary)
    assert any(line.startswith("synth-heldout: generating") for line in logged)
    alone = run_eval(EvalConfig(model=None, benches=["synth"], modes=["low"], out=tmp_path / "alone", limit=3,
                                data_root=tmp_path / "data", progress=False), engine=Echo(), log=lambda m: None)
    assert list(alone.summary) == ["synth"]


# ---------------------------------------------------------------- each benchmark's own figures in report.md


def _records(predictions: list[str | None]) -> list[dict]:
    return [{"prediction": p, "seconds": 0.1, "visual_tokens": 4, "full_res_visual_tokens": 16, "generated_tokens": 3,
             "resized": False, "well_formed": True} for p in predictions]


def test_report_shows_each_benchmarks_native_figures():
    from visionthink.eval.benchmarks import BENCHMARKS
    from visionthink.eval.report import markdown_report, native_figures

    pope = [Sample(f"p{i}", None, "q", answer, {"categories": ["random"]})
            for i, answer in enumerate(["yes", "yes", "no", "no"])]
    rows = [("Yes", "existence", "a"), ("No", "existence", "a"), ("Yes", "code_reasoning", "b"),
            ("No", "code_reasoning", "b")]
    mme = [Sample(f"m{i}", None, "q", answer, {"category": category, "image_id": image})
           for i, (answer, category, image) in enumerate(rows)]
    ocr = [Sample(f"o{i}", None, "q", ["cat"], {"category": "Regular Text Recognition", "hme": False})
           for i in range(4)]
    summary = {
        # POPE: TP 1, FP 1, FN 1, TN 1 -> P = R = F1 = 50, accuracy 50, yes-ratio 2/4 = 50
        "pope": {"visionthink": mode_metrics(BENCHMARKS["pope"], pope, _records(["Yes", "no", "yes", "No"]))},
        # MME: existence 2/2 + 1/1 image = 200; code_reasoning 1/2 + 0/1 = 50
        "mme": {"full": mode_metrics(BENCHMARKS["mme"], mme, _records(["Yes", "No", "Yes", "Yes"]))},
        # OCRBench: 3 of the 4 items run -> 750 / 1000 scaled
        "ocrbench": {"low": mode_metrics(BENCHMARKS["ocrbench"], ocr,
                                                _records(["a cat", "CAT", "dog", "cat!"]))},
    }
    assert native_figures("pope", summary["pope"]["visionthink"]) == (
        "acc 50.0 · P 50.0 · R 50.0 · F1 50.0 · yes-ratio 50.0")
    assert native_figures("mme", summary["mme"]["full"]) == (
        "perception 200.0 / 2000 (of 200 for the categories run) · "
        "cognition 50.0 / 800 (of 200 for the categories run)")
    assert native_figures("ocrbench", summary["ocrbench"]["low"]) == "3 right of 4 run (= 750 / 1000 scaled)"
    full_set = {"score": 0.812, "n": 1000, "official": {"final_score": 812.0}}
    assert native_figures("ocrbench", full_set) == "812 / 1000"
    report = markdown_report(summary, [], {"model": None, "limit": None}, [])
    assert "## Benchmark figures" in report
    assert "| pope | visionthink | 50.0 | 25.0 | acc 50.0 · P 50.0 · R 50.0 · F1 50.0 · yes-ratio 50.0 |" in report
    assert "| mme | full | 62.5 | 25.0 | perception 200.0 / 2000" in report
    assert "| ocrbench | low | 75.0 | 25.0 | 3 right of 4 run (= 750 / 1000 scaled) |" in report
