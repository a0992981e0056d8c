"""`visionthink demo` without a model: `run_demo` runs `run_eval` on the benches and modes of the model's plan (the
ladder world for a model that can zoom, the paper's modes for a resize-only one), and its tables and timing line are
made from eval's summary and records."""

from __future__ import annotations

import pytest

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines import factory
from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks.synth import Synth
from visionthink.eval.summary import mode_metrics
from visionthink.eval.synth_run import LADDER_PLAN, PAPER_PLAN, demo_plan, format_table, run_demo, timing_line
from visionthink.grading import grade_answer
from visionthink.modes import PAPER_MODES
from visionthink.profiles import declare_profile


class VerticalEngine:
    """Answers "vertical" to every question (no answer at all in `low` mode); counts the questions per mode."""

    batch_size = 4

    def __init__(self, model: str | None, protocol_name: str):
        self.model, self.protocol_name, self.asked = model, protocol_name, {}

    def run(self, requests, mode, progress=None):
        self.asked[mode] = self.asked.get(mode, 0) + len(requests)
        answer, tokens = None if mode == "low" else "vertical", 16 if mode == "full" else 4
        return [protocol.Episode(messages=[], answer=answer, turns=[], visual_tokens_per_turn=[tokens],
                                 full_res_visual_tokens=16, seconds={"turn1": 0.01}, mode=mode) for _ in requests]


@pytest.fixture
def engines(monkeypatch) -> list[VerticalEngine]:
    """The engines `run_eval` builds, in order, each a `VerticalEngine` on the model and protocol it was built for."""
    built: list[VerticalEngine] = []

    def build(options, sampling=None, protocol=None):
        built.append(VerticalEngine(options.model, protocol.name))
        return built[-1]

    monkeypatch.setattr(factory, "build_engine", build)
    return built


def table_rows(table: str) -> dict[str, dict[str, str]]:
    """{mode: {column: cell}} of a Markdown table."""
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_demo_runs_the_ladder_world_on_a_model_that_can_zoom(tmp_path, engines):
    n = 12
    model = tmp_path / "ladder-model"
    model.mkdir()
    declare_profile(model, "visionthink-zoom")
    assert demo_plan(str(model)) is LADDER_PLAN
    result = run_demo(tmp_path / "out", n, str(model), batch_size=4, progress=False)
    # every mode on the model's own profile: full and low never call, zoom and the oracle offer both tools
    assert [(e.model, e.protocol_name) for e in engines] == [(str(model), "visionthink-zoom")]
    assert engines[0].asked == {mode: 3 * n for mode in LADDER_PLAN.modes}  # three wording sets
    assert result.report.is_file() and result.plan is LADDER_PLAN
    for bench, wordings in zip(LADDER_PLAN.benches, ("train", "heldout", "heldout-templates"), strict=True):
        items = synth.ladder_items("test", n, wordings=wordings)
        right = [grade_answer(item.answer, "vertical", item.question)[0] for item in items]  # the bench's own grade
        rows = table_rows(format_table(result.summary[bench]))
        assert list(rows) == ["full", "low", "zoom (ladder)", "oracle-ladder"]
        assert rows["full"]["acc all"] == f"{100 * sum(right) / n:.1f}%"
        assert rows["low"]["acc all"] == "0.0%" and rows["low"]["no answer"] == str(n)
        assert rows["full"]["% full-res"] == "100.0%" and rows["low"]["% full-res"] == "25.0%"
        assert rows["full"]["zoom/resize fine_spread"] == "0% / 0%"  # no call was made
        # every episode answered at once: right for the coarse and large-label items (9 of the mix's 12)
        assert rows["zoom (ladder)"]["right action"] == "75.0%"
        assert rows["full"]["p50 s/item"] == "-"  # batches of 4: no per-item percentiles
        assert len(result.records[bench]) == 4 * n
        line = timing_line(result.records[bench])
        assert "(up to 4 items per batch)" in line and "wall time per batch: p50" in line


def test_demo_on_a_resize_only_model_runs_the_papers_modes(tmp_path, engines):
    model = tmp_path / "resize-model"
    model.mkdir()
    declare_profile(model, "visionthink")
    assert demo_plan(str(model)) is PAPER_PLAN
    result = run_demo(tmp_path / "out", 3, str(model), batch_size=4, progress=False)
    assert len(engines) == 1 and engines[0].protocol_name == "visionthink"
    assert all(list(result.summary[bench]) == list(PAPER_MODES) for bench in PAPER_PLAN.benches)
    header = format_table(result.summary["synth"]).splitlines()[0]
    assert "zoom/resize fine_small" in header and "fine_spread" not in header and "right action" in header


def test_demo_refuses_a_report_folder_that_holds_files(tmp_path, engines):
    (tmp_path / "samples.jsonl").write_text("")
    with pytest.raises(VisionThinkError, match="not empty"):
        run_demo(tmp_path, 3, None, batch_size=4, progress=False)
    assert engines == []


def test_table_cells_come_from_eval_figures_measured_or_shared():
    bench = Synth()
    samples = bench.load(None, limit=3)  # coarse, fine_small, fine_large
    records = [{"prediction": sample.answer if i else "wrong", "seconds": 0.1 * (i + 1), "visual_tokens": 4,
                "full_res_visual_tokens": 16, "generated_tokens": 3, "resized": False, "well_formed": True,
                "action": "zoom" if i == 1 else "answer", "answer_error": None, "batch_id": str(i), "batch_size": 1,
                "batch_seconds": 0.2 * (i + 1)} for i, sample in enumerate(samples)]
    alone = mode_metrics(bench, samples, records)
    rows = table_rows(format_table({"oracle": alone, "oracle-zoom": alone}))
    row = rows["oracle-zoom"]
    assert (row["acc coarse"], row["acc fine_small"], row["acc all"]) == ("0.0%", "100.0%", "66.7%")
    assert (row["zoom/resize coarse"], row["zoom/resize fine_small"]) == ("0% / 0%", "100% / 0%")
    assert row["right action"] == "100.0%"  # the small label zoomed, the others answered
    assert (row["seconds"], row["s/item fine_large"], row["p50 s/item"]) == ("1.2", "0.600", "0.400")
    assert timing_line(records).startswith("per-item times measured")
    shared = [{**r, "batch_id": "one", "batch_size": 3, "batch_seconds": 0.9} for r in records]
    row = table_rows(format_table({"low": mode_metrics(bench, samples, shared)}))["low"]
    assert (row["seconds"], row["s/item coarse"], row["p50 s/item"], row["p95 s/item"]) == ("0.9", "0.100", "-", "-")
    assert timing_line(shared).endswith("wall time per batch: p50 0.900 s, p95 0.900 s")
