"""What a new tool costs: a `Tool` subclass and its registration, nothing else. This file adds one (`crop_quarter`,
a quarter of the full-resolution view) and runs it through the loop, the parser, the template, the GRPO environment
and the server's tool-call form, with no change to the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from conftest import TINY_GRID as GRID  # tests/ is on sys.path
from conftest import ScriptedBackend
from PIL import Image

from visionthink import protocol, tools
from visionthink.engines.base import Request, run_episodes
from visionthink.images import PixelGrid, Views
from visionthink.modes import Mode
from visionthink.profiles import VISIONTHINK, ProtocolProfile
from visionthink.serve.replies import split_tool_calls
from visionthink.tools import RESIZE, Tool
from visionthink.train import grpo_env

QUARTERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class QuarterTool(Tool):
    """One quarter of the full-resolution view."""

    def check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        quarter = arguments.get("quarter")
        if quarter not in QUARTERS:
            return None, f"quarter must be one of {', '.join(QUARTERS)}"
        return {"quarter": quarter}, None

    def image(self, arguments: dict[str, Any], views: Views, grid: PixelGrid) -> Image.Image:
        width, height = views.high.size
        column, row = QUARTERS.index(arguments["quarter"]) % 2, QUARTERS.index(arguments["quarter"]) // 2
        return views.high.crop((column * width // 2, row * height // 2, (column + 1) * width // 2,
                                (row + 1) * height // 2))

    def oracle_arguments(self, request, views: Views, source_size: tuple[int, int]) -> dict[str, Any]:
        return {"quarter": "top-left"}


QUARTER = QuarterTool(
    name="crop_quarter", kind="quarter", description="Show one quarter of the image at full resolution.",
    parameters={"type": "object", "properties": {"quarter": {
        "type": "string", "enum": list(QUARTERS), "description": "Which quarter."}}, "required": ["quarter"]},
    response_text="Quarter at full resolution. Think in <think> </think>, then answer in <answer> </answer>.",
)
PROFILE = ProtocolProfile(name="visionthink-quarter", system_prompt=VISIONTHINK.system_prompt, tools=(RESIZE, QUARTER),
                          tools_in_template=True, template_file=None, turn_end_newline=True)
MODE = Mode("quarter", "low-res first, the model may crop a quarter", tools=("resize_image", "crop_quarter"))
CALL = PROFILE.call_text("small", "crop_quarter", {"quarter": "bottom-right"})


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(tools.TOOLS, QUARTER.name, QUARTER)  # the one registration line


def test_the_loop_runs_a_new_tool_and_the_episode_records_its_call():
    answer = protocol.answer_text("seen", "dots")
    backend = ScriptedBackend({"crop": [CALL, answer], "bad": [CALL.replace("bottom-right", "middle"), answer],
                               "answer": [answer]}, PROFILE)
    image = Image.new("RGB", (168, 112), "white")
    image.paste((255, 0, 0), (84, 56, 168, 112))  # the bottom-right quarter is red
    episodes = run_episodes(backend, [Request(image, q) for q in ("crop", "bad", "answer")], MODE)
    crop, bad, direct = episodes
    assert crop.action == "quarter" and not crop.resized and not crop.zoomed and crop.well_formed
    assert crop.calls == [tools.ToolCall("crop_quarter", {"quarter": "bottom-right"})]
    got = protocol.images_in(crop.messages)[-1]
    assert got.size == (84, 56) and got.getpixel((10, 10)) == (255, 0, 0)
    assert crop.messages[3]["name"] == "crop_quarter" and QUARTER.response_text in str(crop.messages[3]["content"])
    assert crop.visual_tokens_per_turn == [GRID.tokens(84, 56), GRID.tokens(84, 56)]
    assert bad.messages[3]["content"][0]["text"] == "Error: quarter must be one of " + ", ".join(QUARTERS)
    assert bad.action == "answer" and bad.answer == "dots" and not bad.well_formed
    assert direct.action == "answer" and direct.calls == []


def test_the_parser_template_and_server_know_it_from_the_profile(shipped_model):
    turn = PROFILE.parse_turn(CALL)
    assert turn.kind == "quarter" and turn.call.arguments == {"quarter": "bottom-right"} and turn.well_formed
    assert VISIONTHINK.parse_turn(CALL).error == "unknown tool 'crop_quarter'; the only tool is resize_image"
    _, processor = shipped_model
    from visionthink.tokens import render_text

    rendered = render_text(processor, PROFILE.first_turn("q", Image.new("RGB", (56, 56))), True, protocol=PROFILE)
    assert '"name": "crop_quarter"' in rendered and '"name": "resize_image"' in rendered
    content, calls = split_tool_calls(CALL)
    assert calls[0]["function"] == {"name": "crop_quarter", "arguments": '{"quarter": "bottom-right"}'}


def test_the_grpo_environment_is_generated_from_it():
    environment = grpo_env.environment_for(PROFILE, GRID)
    assert grpo_env.tool_methods(environment) == ["crop_quarter", "resize_image"]
    assert grpo_env.environment_tools(environment) == [RESIZE.schema, QUARTER.schema]
    instance = environment()
    high = Image.new("RGB", (168, 112), "blue")
    instance.reset(high_res_image=high, image=high.resize((84, 56)))
    reply = instance.crop_quarter(quarter="top-left")
    assert reply[1]["text"] == QUARTER.response_text and instance.returned_images[0].size == (84, 56)
    assert instance.resize_image(action="resize")[0]["text"] == "Error: a tool was already called"


def test_trl_renders_the_profiles_tool_block_in_the_profiles_order():
    """TRL lists an environment's methods by name (crop_quarter before resize_image); the trainer is made to render
    the profile's order, so that training prompts equal inference prompts."""
    from types import SimpleNamespace

    environment = grpo_env.environment_for(PROFILE, GRID)
    instance = environment()
    trainer = SimpleNamespace(tools=[instance.crop_quarter, instance.resize_image],
                              _env_tools={None: [instance.crop_quarter, instance.resize_image]})
    grpo_env.use_profile_tools(trainer, environment)
    for listed in (trainer.tools, trainer._env_tools[None]):
        names = [tool.__name__ if callable(tool) else tool["function"]["name"] for tool in listed]
        assert names == ["resize_image", "crop_quarter"]
