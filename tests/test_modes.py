"""Modes as values (`visionthink.modes`) and the profile a model folder declares (`profiles.declared_profile`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionthink import cli
from visionthink.engines.base import Request, check_mode
from visionthink.modes import MODES, PAPER_MODES, get_mode
from visionthink.profiles import (
    DECLARATION_FILE,
    RELEASE,
    VISIONTHINK,
    VISIONTHINK_ZOOM,
    declare_profile,
    declared_profile,
    missing_tools_error,
    with_tools,
)

REFUSAL = ("error: mode zoom needs the zoom_image tool, which this model's protocol 'visionthink' does not offer (a "
           f"model trained with it declares it in its {DECLARATION_FILE})")


def test_who_decides_on_a_call_in_each_mode():
    assert [name for name, mode in MODES.items() if mode.decides] == ["visionthink", "zoom"]
    assert MODES["full"].first_view == "high" and all(MODES[m].first_view == "low" for m in MODES if m != "full")
    needs, fine = Request(None, "q", needs_high_res=True), Request(None, "q", needs_high_res=False)
    for name in ("full", "low"):
        assert MODES[name].forbids_call(needs, 0) and MODES[name].forbids_call(fine, 1)
    oracle = MODES["oracle"]
    assert oracle.forbids_call(fine, 0) and not oracle.forbids_call(needs, 0) and not oracle.forbids_call(fine, 1)
    assert oracle.oracle_calls(needs, 0) == "resize_image"
    assert oracle.oracle_calls(needs, 1) is None and oracle.oracle_calls(fine, 0) is None
    assert MODES["oracle-zoom"].oracle_calls(needs, 0) == "zoom_image"
    assert MODES["oracle-zoom"].needs_box and MODES["oracle-ladder"].needs_box and not oracle.needs_box


@pytest.mark.parametrize(("action", "tool"), [("answer", None), ("zoom", "zoom_image"), ("resize", "resize_image")])
def test_the_ladder_oracle_takes_each_items_right_action(action, tool):
    ladder = MODES["oracle-ladder"]
    request = Request(None, "q", needs_high_res=action != "answer", right_action=action, box=(0, 0, 2, 2))
    assert ladder.oracle_label == "right_action" and ladder.tools == ("resize_image", "zoom_image")
    assert ladder.oracle_calls(request, 0) == tool and ladder.oracle_calls(request, 1) is None
    assert ladder.forbids_call(request, 0) == (tool is None) and not ladder.forbids_call(request, 1)
    with pytest.raises(ValueError, match="oracle-ladder mode needs `right_action` on every request"):
        check_mode("oracle-ladder", [Request(None, "q", needs_high_res=True)], VISIONTHINK_ZOOM)
    zooms = Request(None, "q", right_action="zoom")
    with pytest.raises(ValueError, match="needs `box` on every request its oracle zooms into"):
        check_mode("oracle-ladder", [zooms], VISIONTHINK_ZOOM)
    assert check_mode("oracle-ladder", [request, Request(None, "q", right_action="answer")], VISIONTHINK_ZOOM) is ladder
    assert PAPER_MODES == ("full", "low", "visionthink", "oracle")
    with pytest.raises(ValueError, match="unknown mode 'zoomed'; expected one of full, low, visionthink"):
        get_mode("zoomed")


def test_a_mode_runs_on_the_models_profile_restricted_to_its_tools():
    assert with_tools(VISIONTHINK_ZOOM, MODES["visionthink"].tools) is VISIONTHINK
    assert with_tools(VISIONTHINK, MODES["zoom"].tools) is VISIONTHINK_ZOOM  # within the family, when asked for
    assert with_tools(RELEASE, MODES["oracle"].tools) is RELEASE
    with pytest.raises(ValueError, match="protocol 'release' has no zoom_image tool"):
        with_tools(RELEASE, MODES["zoom"].tools)
    assert missing_tools_error("zoom", MODES["zoom"].tools, VISIONTHINK_ZOOM) is None
    assert missing_tools_error("zoom", MODES["zoom"].tools, VISIONTHINK) == REFUSAL.removeprefix("error: ")


def test_a_model_folder_declares_its_profile(tmp_path):
    assert declared_profile(None) is VISIONTHINK_ZOOM  # the default model's (the ladder's)
    assert declared_profile(tmp_path) is VISIONTHINK
    declare_profile(tmp_path, "visionthink-zoom")
    assert json.loads((tmp_path / DECLARATION_FILE).read_text()) == {"protocol": "visionthink-zoom"}
    assert declared_profile(tmp_path) is VISIONTHINK_ZOOM
    (tmp_path / DECLARATION_FILE).write_text('{"protocol": "zoomier"}')
    with pytest.raises(ValueError, match="unknown protocol 'zoomier'"):
        declared_profile(tmp_path)
    (tmp_path / DECLARATION_FILE).write_text("[1]")
    with pytest.raises(ValueError, match="is not a declaration"):
        declared_profile(tmp_path)


def test_the_shipped_zoom_model_declares_its_profile(shipped_model_dir):
    assert declared_profile(shipped_model_dir) is VISIONTHINK
    assert declared_profile(shipped_model_dir.parent / "tiny-synth-zoom") is VISIONTHINK_ZOOM


def test_eval_refuses_a_mode_the_model_lacks_in_one_line_before_any_work(tmp_path, capsys, shipped_model_dir):
    out = tmp_path / "out"  # the resize model: no zoom_image
    assert cli.main(["eval", "--modes", "visionthink,zoom", "--limit", "2", "--out", str(out),
                     "--model", str(shipped_model_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [REFUSAL]
    assert not out.exists()


def test_ask_refuses_a_mode_the_model_lacks(capsys, shipped_model_dir):
    image = Path(__file__).resolve().parents[1] / "examples" / "count.png"
    assert cli.main(["ask", str(image), "How many shapes?", "--mode", "zoom", "--model", str(shipped_model_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [REFUSAL]


def test_the_command_line_offers_the_registered_modes():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    ask_mode = next(a for a in commands["ask"]._actions if a.dest == "mode")
    assert ask_mode.choices == [name for name, mode in MODES.items() if mode.calls != "oracle"]
    eval_modes = next(a for a in commands["eval"]._actions if a.dest == "modes")
    assert eval_modes.default == ",".join(PAPER_MODES) and all(name in eval_modes.help for name in MODES)
