"""Region zoom (issue 12): the `zoom_image` tool of the `visionthink-zoom` profile, its crop, its token accounting,
every bad box, the `zoom` / `oracle-zoom` modes of the loop, and eval's oracle-zoom on the synthetic world."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import TINY_GRID as GRID  # tests/ is on sys.path
from conftest import ScriptedBackend
from PIL import Image

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.base import Request, run_episodes
from visionthink.images import PixelGrid, make_views, zoom_budget_cells, zoom_crop, zoom_region
from visionthink.modes import MODES, PAPER_MODES
from visionthink.profiles import NAMES, RELEASE, VISIONTHINK, VISIONTHINK_ZOOM, get_profile, with_tools
from visionthink.tokens import IGNORE_INDEX, render_text
from visionthink.tools import RESIZE as RESIZE_TOOL
from visionthink.tools import ZOOM as ZOOM_TOOL
from visionthink.tools import ToolCall, codec
from visionthink.tools.zoom import oracle_box

WORLD_SIZES = [(112, 112), (168, 112), (112, 168)]
ANSWER = protocol.answer_text("seen", "dots")


def zoom_text(think, box) -> str:
    """The canonical zoom-call turn."""
    return VISIONTHINK_ZOOM.call_text(think, ZOOM_TOOL.name, {"box": box})


def resize_text(think) -> str:
    """The canonical resize-call turn."""
    return VISIONTHINK_ZOOM.call_text(think, RESIZE_TOOL.name, {"action": "resize"})


def call(arguments, name="zoom_image") -> str:
    payload = arguments if isinstance(arguments, str) else json.dumps({"name": name, "arguments": arguments})
    return f"<think>small</think>\n<tool_call>\n{payload}\n</tool_call>"


def views_of(width, height):
    return make_views(Image.new("RGB", (width, height), "white"), GRID)


# ---------------------------------------------------------------- profiles and parsing


def test_zoom_profile_is_registered_and_the_default_profiles_are_unchanged():
    assert "visionthink-zoom" in NAMES and get_profile("visionthink-zoom") is VISIONTHINK_ZOOM
    zoom = ("resize_image", "zoom_image")
    assert VISIONTHINK_ZOOM.offers("zoom_image") and not VISIONTHINK.offers("zoom_image")
    assert not RELEASE.offers("zoom_image")
    assert with_tools(None, zoom) is VISIONTHINK_ZOOM and with_tools("visionthink-zoom", zoom) is VISIONTHINK_ZOOM
    with pytest.raises(ValueError, match="no zoom_image tool"):
        with_tools("release", zoom)
    assert VISIONTHINK.template_tools() == [RESIZE_TOOL.schema]
    assert VISIONTHINK_ZOOM.template_tools() == [RESIZE_TOOL.schema, ZOOM_TOOL.schema]
    image = Image.new("RGB", (56, 56))
    assert VISIONTHINK.first_turn("q?", image) == protocol.first_turn("q?", image)
    assert protocol.ZOOM_USER_INSTRUCTION in VISIONTHINK_ZOOM.first_turn("q?", image)[1]["content"][1]["text"]
    # the default profile still knows one tool: a zoom call is an unknown tool there, as before
    turn = VISIONTHINK.parse_turn(call({"box": [1, 2, 3, 4]}))
    assert turn.kind == "malformed" and turn.error == "unknown tool 'zoom_image'; the only tool is resize_image"


def test_zoom_profile_renders_both_tools(shipped_model):
    _, processor = shipped_model
    messages = VISIONTHINK_ZOOM.first_turn("What pattern?", Image.new("RGB", (56, 56)))
    text = render_text(processor, messages, add_generation_prompt=True, protocol=VISIONTHINK_ZOOM)
    assert '"name": "resize_image"' in text and '"name": "zoom_image"' in text
    plain = render_text(processor, protocol.first_turn("What pattern?", Image.new("RGB", (56, 56))), True)
    assert '"name": "zoom_image"' not in plain and plain == render_text(processor, protocol.first_turn(
        "What pattern?", Image.new("RGB", (56, 56))), True, protocol="visionthink")


def test_zoom_calls_parse():
    text = zoom_text("the label is small", [10, 12, 24, 26])
    turn = VISIONTHINK_ZOOM.parse_turn(text)
    assert turn.kind == "zoom" and turn.box == (10.0, 12.0, 24.0, 26.0) and turn.well_formed
    canonical = codec.call_json(ZOOM_TOOL.name, ZOOM_TOOL.canonical({"box": [1.0, 2.25, 3, 4]}))
    assert json.loads(canonical)["arguments"]["box"] == [1, 2.2, 3, 4]
    fractional = VISIONTHINK_ZOOM.parse_turn(call({"box": [0.5, 1.5, 20.25, 30]}))
    assert fractional.kind == "zoom" and fractional.box == (0.5, 1.5, 20.25, 30.0)
    extra = VISIONTHINK_ZOOM.parse_turn(call({"box": [1, 2, 30, 40], "zoom": 2}))
    assert extra.kind == "zoom" and not extra.well_formed  # tolerated, but no format reward
    as_string = VISIONTHINK_ZOOM.parse_turn(call(json.dumps({"name": "zoom_image",
                                                              "arguments": json.dumps({"box": [1, 2, 3, 4]})})))
    assert as_string.kind == "zoom"
    resize = VISIONTHINK_ZOOM.parse_turn(resize_text("too small"))
    assert resize.kind == "resize" and resize.well_formed and resize.box is None
    sloppy = VISIONTHINK_ZOOM.parse_turn(call({}, name="resize_image"))
    assert sloppy.kind == "resize" and not sloppy.well_formed
    answer = VISIONTHINK_ZOOM.parse_turn(ANSWER)
    assert answer.kind == "answer" and answer.answer == "dots" and answer.well_formed
    trailing = VISIONTHINK_ZOOM.parse_turn(text + " more")
    assert trailing.kind == "zoom" and not trailing.well_formed


BAD_BOXES = [
    ({}, "required argument 'box'"),
    ({"region": [1, 2, 3, 4]}, "required argument 'box'"),
    ({"box": None}, "not NoneType"),
    ({"box": "1, 2, 30, 40"}, "not str"),
    ({"box": "[1, 2, 30, 40]"}, "not str"),
    ({"box": {"x1": 1, "y1": 2, "x2": 3, "y2": 4}}, "not dict"),
    ({"box": 12}, "not int"),
    ({"box": []}, "4 numbers [x1, y1, x2, y2], not 0"),
    ({"box": [1, 2, 3]}, "not 3"),
    ({"box": [1, 2, 3, 4, 5]}, "not 5"),
    ({"box": [[1, 2], [3, 4]]}, "not 2"),
    ({"box": ["1", 2, 30, 40]}, "must be numbers"),
    ({"box": [1, 2, None, 40]}, "must be numbers"),
    ({"box": [True, 2, 30, 40]}, "must be numbers"),
    ({"box": [1, 2, [30], 40]}, "must be numbers"),
    ({"box": [10, 10, 5, 20]}, "empty or inverted"),  # x inverted
    ({"box": [10, 20, 30, 5]}, "empty or inverted"),  # y inverted
    ({"box": [10, 10, 10, 20]}, "empty or inverted"),  # zero width
    ({"box": [10, 10, 20, 10]}, "empty or inverted"),  # zero height
    ({"box": [-1, -1, -1, -1]}, "empty or inverted"),
]


@pytest.mark.parametrize(("arguments", "error"), BAD_BOXES)
def test_bad_boxes_are_malformed_calls(arguments, error):
    turn = VISIONTHINK_ZOOM.parse_turn(call(arguments))
    assert turn.kind == "malformed" and error in turn.error and turn.box is None


@pytest.mark.parametrize("payload", [
    '{"name": "zoom_image", "arguments": {"box": [NaN, 2, 30, 40]}}',
    '{"name": "zoom_image", "arguments": {"box": [1, 2, Infinity, 40]}}',
    '{"name": "zoom_image", "arguments": {"box": [1, -Infinity, 30, 40]}}',
    '{"name": "zoom_image", "arguments": {"box": [1, 2, 1e400, 40]}}',
    '{"name": "zoom_image", "arguments": {"box": [1, 2, ' + "9" * 400 + ', 40]}}',
])
def test_non_finite_boxes_are_malformed_calls(payload):
    turn = VISIONTHINK_ZOOM.parse_turn(call(payload))
    assert turn.kind == "malformed" and "finite" in turn.error


@pytest.mark.parametrize(("payload", "error"), [
    ('{"name": "zoom_image", "arguments": {"box": [1, 2, 3, 4]}', "not valid JSON"),
    ('{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}', "the tools are resize_image and zoom_image"),
    ('[1, 2, 3, 4]', "not a JSON object"),
    ('{"name": "zoom_image", "arguments": [1, 2, 3, 4]}', "arguments are not a JSON object"),
    ('{"name": "zoom_image", "arguments": "{box"}', "arguments are not valid JSON"),
    ('{"name": "resize_image", "arguments": {"action": "zoom"}}', "unknown action"),
])
def test_other_bad_calls_under_the_zoom_profile(payload, error):
    turn = VISIONTHINK_ZOOM.parse_turn(call(payload))
    assert turn.kind == "malformed" and error in turn.error


def test_two_calls_and_call_with_answer_are_malformed():
    one = call({"box": [1, 2, 30, 40]})
    twice = one + "\n" + one.split("</think>")[1]
    assert VISIONTHINK_ZOOM.parse_turn(twice).error == "more than one tool call in a turn"
    assert VISIONTHINK_ZOOM.parse_turn(one + "<answer>dots</answer>").kind == "malformed"


@pytest.mark.parametrize(("box", "inside"), [
    ([60, 60, 80, 80], False),  # beyond the right and bottom edges of a 56x56 view
    ([-20, -20, -1, -1], False),  # above and left
    ([56, 0, 70, 10], False),  # touches the right edge only: no pixel inside
    ([0, 56, 10, 70], False),
    ([-5, -5, 10, 10], True),  # partly outside: clamped
    ([50, 50, 500, 500], True),
    ([0, 0, 56, 56], True),
])
def test_boxes_outside_the_view_are_malformed(box, inside):
    turn = VISIONTHINK_ZOOM.parse_turn(call({"box": box}))
    checked = VISIONTHINK_ZOOM.check_turn(turn, views_of(112, 112))
    assert (checked.kind == "zoom") is inside
    if not inside:
        assert "outside the image (the image is 56x56 pixels)" in checked.error and checked.think == "small"
        # reply() refuses it too when a caller skipped check_turn: an error turn, never a crash
        reply = VISIONTHINK_ZOOM.reply(turn, call({"box": box}), views_of(112, 112), GRID)
        assert reply["content"][0]["text"].startswith("Error: box lies outside")


def test_zoom_reply_is_made_from_the_views():
    """A zoom's reply needs both views (the box is in the low view's pixels, the crop comes from the high view): the
    only reply is `reply(turn, text, views, grid)`, and it is the crop, not the whole high view."""
    assert not hasattr(VISIONTHINK_ZOOM, "tool_reply")
    views = views_of(112, 112)
    text = call({"box": [1, 2, 30, 40]})
    reply = VISIONTHINK_ZOOM.reply(VISIONTHINK_ZOOM.parse_turn(text), text, views, GRID)
    crop = zoom_crop((1, 2, 30, 40), views, GRID)
    assert reply == protocol.tool_turn(ZOOM_TOOL, crop) and reply["name"] == "zoom_image"
    assert reply["content"][1]["text"] == ZOOM_TOOL.response_text
    assert protocol.images_in([reply])[0].tobytes() == crop.tobytes() and crop.size != views.high.size


def test_parse_never_raises_on_odd_input():
    for text in [None, 12, "<tool_call>", "<think>a</think><tool_call>{\"name\": \"zoom_image\"}</tool_call>",
                 call('{"name": "zoom_image", "arguments": {"box": ' + "[" * 5000 + "]" * 5000 + "}}")]:
        assert VISIONTHINK_ZOOM.parse_turn(text).kind == "malformed"


# ---------------------------------------------------------------- the crop and its tokens


def box_cases(width, height):
    low_w, low_h = width // 2, height // 2
    return [
        (0, 0, 1, 1),  # one pixel in a corner
        (low_w - 1, low_h - 1, low_w, low_h),  # the other corner
        (low_w / 2 - 3, low_h / 2 - 3, low_w / 2 + 3, low_h / 2 + 3),
        (3.3, 7.7, 20.2, 25.9),  # fractional
        (0, 0, low_w, low_h),  # the whole view
        (-30, -30, low_w + 30, low_h + 30),  # larger than the view: clamped
        (5, 5, 6, low_h),  # a thin tall strip
        (5, 5, low_w, 6),  # a thin wide strip
        (10, 10, 27, 27),  # a small label's size (x2: 34 px at full resolution)
    ]


@pytest.mark.parametrize("size", WORLD_SIZES)
def test_crop_is_on_the_grid_inside_the_image_and_covers_the_box_within_the_budget(size):
    views = views_of(*size)
    assert views.high.size == size and views.low.size == (size[0] // 2, size[1] // 2)
    budget = zoom_budget_cells(size[0] // 28, size[1] // 28)
    assert budget == max(4, size[0] // 28 * size[1] // 28 // 4)
    for box in box_cases(*size):
        left, top, right, bottom = zoom_region(box, views, GRID)
        width, height = right - left, bottom - top
        assert width % 28 == 0 and height % 28 == 0, box
        assert width >= 56 and height >= 56, box  # at least 2x2 visual tokens
        assert (width // 28) * (height // 28) <= budget, box  # never more than the zoom budget
        assert 0 <= left and 0 <= top and right <= size[0] and bottom <= size[1], box
        x1, y1 = max(0, box[0]) * 2, max(0, box[1]) * 2
        x2, y2 = min(size[0] // 2, box[2]) * 2, min(size[1] // 2, box[3]) * 2
        assert left % 28 == 0 and top % 28 == 0, box  # on the high view's token lattice
        touched_x = math.ceil(x2 / 28) - math.floor(x1 / 28)  # lattice cells the box touches
        touched_y = math.ceil(y2 / 28) - math.floor(y1 / 28)
        if max(2, touched_x) * max(2, touched_y) <= budget:  # the box fits the budget: covered exactly
            assert left <= x1 + 1e-9 and top <= y1 + 1e-9 and right >= x2 - 1e-9 and bottom >= y2 - 1e-9, box
            assert width == max(56, touched_x * 28) and height == max(56, touched_y * 28), box
        else:  # too large: the budget's worth around the box's centre
            assert (width // 28) * (height // 28) > budget - max(width, height) // 28, box
            assert left <= (x1 + x2) / 2 <= right and top <= (y1 + y2) / 2 <= bottom, box
        crop = zoom_crop(box, views, GRID)
        assert crop.size == (width, height)
        assert crop.tobytes() == views.high.crop((left, top, right, bottom)).tobytes()  # not resampled
        assert GRID.tokens(*crop.size) == (width // 28) * (height // 28)


def test_crop_is_the_high_view_pixel_for_pixel():
    item = synth.make_item(31, 1)  # a fine_small item: the label's 1 px pattern must survive the crop
    views = make_views(item.image, GRID)
    x1, y1, x2, y2 = item.label_box
    crop = zoom_crop((x1 / 2, y1 / 2, x2 / 2, y2 / 2), views, GRID)
    region = zoom_region((x1 / 2, y1 / 2, x2 / 2, y2 / 2), views, GRID)
    assert crop.tobytes() == item.image.crop(region).tobytes()
    assert region[0] <= x1 and region[1] <= y1 and region[2] >= min(x2, item.image.width)


def test_a_label_lands_on_the_crops_lattice_as_in_the_full_view():
    """The oracle's crop of a label shows it in whole token cells at the phase the full view shows it (the labels
    sit in token cells): the label's offset inside the crop is a whole number of cells, for every world shape."""
    for index in range(60):
        item = synth.make_item(7, index)
        views = make_views(item.image, GRID)
        box = oracle_box(item.label_box, item.image.size, views.low.size)
        left, top, right, bottom = zoom_region(box, views, GRID)
        x1, y1, x2, y2 = item.label_box
        assert (x1 - left) % 28 == 0 and (y1 - top) % 28 == 0, (item.image.size, item.label_box)
        assert left <= x1 and top <= y1 and min(x2, item.image.width) <= right and min(y2, item.image.height) <= bottom
        assert (right - left, bottom - top) == (56, 56)  # a label fits one cell: the 2x2 minimum


def test_the_crop_is_what_the_model_receives(shipped_model):
    """The processor gives the crop exactly the visual tokens the grid counts (the engine also checks this on
    every prefill), for every aspect ratio of the world and boxes of every kind."""
    from visionthink.tokens import encode, visual_tokens

    _, processor = shipped_model
    assert processor.grid == GRID
    for size in WORLD_SIZES:
        views = views_of(*size)
        for box in box_cases(*size):
            crop = zoom_crop(box, views, processor.grid)
            messages = [*VISIONTHINK_ZOOM.first_turn("q?", views.low),
                        protocol.assistant_turn(zoom_text("t", box)), protocol.tool_turn(ZOOM_TOOL, crop)]
            batch = encode(processor, messages, add_generation_prompt=True, protocol=VISIONTHINK_ZOOM)
            received = visual_tokens(processor, batch["image_grid_thw"])
            assert received == [processor.grid.tokens(*views.low.size), processor.grid.tokens(*crop.size)], (size, box)


def test_crop_on_a_larger_grid_keeps_min_pixels():
    grid = PixelGrid(28, 56 * 56 * 2, 28 * 28 * 1280)  # min_pixels larger than 2x2 cells
    views = make_views(Image.new("RGB", (1000, 700), "white"), grid)
    left, top, right, bottom = zoom_region((10, 10, 12, 12), views, grid)
    assert (right - left) * (bottom - top) >= grid.min_pixels
    assert (right - left) % 28 == 0 and (bottom - top) % 28 == 0
    assert right <= views.high.width and bottom <= views.high.height
    with pytest.raises(ValueError, match="does not overlap"):
        zoom_region((-10, -10, -1, -1), views, grid)


def test_oracle_box_covers_the_true_box():
    assert oracle_box((57, 1, 80, 23), (112, 112), (56, 56)) == (28, 0, 40, 12)
    assert oracle_box((0, 0, 112, 168), (112, 168), (56, 84)) == (0, 0, 56, 84)
    assert oracle_box((10, 10, 20, 20), (1000, 700), (504, 336)) == (5, 4, 11, 10)


# ---------------------------------------------------------------- the loop


def test_modes_are_listed():
    assert PAPER_MODES == ("full", "low", "visionthink", "oracle")  # what demo runs, unchanged
    assert tuple(MODES) == PAPER_MODES + ("zoom", "oracle-zoom", "oracle-ladder")
    zoom_modes = ("zoom", "oracle-zoom", "oracle-ladder")
    assert [MODES[name].tools for name in zoom_modes] == [("resize_image", "zoom_image")] * 3
    assert all(MODES[name].tools == ("resize_image",) for name in PAPER_MODES)
    assert (MODES["oracle"].oracle_tool, MODES["oracle-zoom"].oracle_tool) == ("resize_image", "zoom_image")


@pytest.mark.parametrize("size", WORLD_SIZES)
def test_zoom_mode_runs_the_crop_and_counts_its_tokens(size):
    low_w, low_h = size[0] // 2, size[1] // 2
    script = {
        "zooms": [zoom_text("small", [2, 3, 15, 16]), ANSWER],
        "resizes": [resize_text("small"), ANSWER],
        "answers": [ANSWER],
        "outside": [call({"box": [low_w + 1, 0, low_w + 20, 10]}), ANSWER],
        "nan": [call('{"name": "zoom_image", "arguments": {"box": [NaN, 0, 1, 1]}}'), ANSWER],
        "inverted": [call({"box": [20, 20, 10, 10]}), ANSWER],
        "arity": [call({"box": [1, 2, 3]}), ANSWER],
        "strings": [call({"box": ["a", "b", "c", "d"]}), ANSWER],
        "zooms twice": [zoom_text("a", [0, 0, 10, 10]), zoom_text("b", [0, 0, 10, 10])],
    }
    requests = [Request(Image.new("RGB", size, "white"), q) for q in script]
    episodes = dict(zip(script, run_episodes(ScriptedBackend(script, VISIONTHINK_ZOOM), requests, "zoom"), strict=True))
    low_tokens, full = GRID.tokens(low_w, low_h), GRID.tokens(*size)
    zoomed = episodes["zooms"]
    assert zoomed.zoomed and not zoomed.resized and zoomed.action == "zoom" and zoomed.well_formed
    assert zoomed.zoom_box == (2.0, 3.0, 15.0, 16.0) and zoomed.answer == "dots"
    tool = zoomed.messages[3]
    assert tool["role"] == "tool" and tool["name"] == "zoom_image"
    crop = protocol.images_in(zoomed.messages)[1]
    assert crop.size == (56, 56)  # 26 px of the high view, grown to 2x2 cells
    assert zoomed.visual_tokens_per_turn == [low_tokens, 4] and zoomed.visual_tokens == low_tokens + 4
    assert zoomed.full_res_visual_tokens == full and zoomed.summary()["action"] == "zoom"
    assert zoomed.summary()["zoom_box"] == [2.0, 3.0, 15.0, 16.0]
    resized = episodes["resizes"]
    assert resized.resized and not resized.zoomed and resized.action == "resize" and resized.well_formed
    assert resized.visual_tokens == low_tokens + full
    assert episodes["answers"].action == "answer" and episodes["answers"].visual_tokens == low_tokens
    for name in ("outside", "nan", "inverted", "arity", "strings"):
        episode = episodes[name]
        assert episode.turns[0].kind == "malformed" and episode.action == "answer", name
        assert episode.messages[3]["role"] == "tool" and episode.messages[3]["content"][0]["text"].startswith("Error: ")
        assert len(protocol.images_in(episode.messages)) == 1 and episode.visual_tokens == low_tokens, name
        assert episode.answer == "dots" and not episode.well_formed, name
    assert "outside the image" in episodes["outside"].messages[3]["content"][0]["text"]
    twice = episodes["zooms twice"]
    assert twice.answer is None and twice.zoomed and "called zoom_image instead of answering" in twice.error


def test_oracle_zoom_zooms_on_the_true_box_only_where_needed():
    script = {"needs": [ANSWER, ANSWER], "fine": [ANSWER],
              "needs, zooms elsewhere": [zoom_text("x", [40, 40, 50, 50]), ANSWER]}
    box = (60, 20, 90, 50)  # image pixels of the 168x112 image
    requests = [Request(Image.new("RGB", (168, 112)), "needs", True, box), Request(Image.new("RGB", (168, 112)),
                "fine", False), Request(Image.new("RGB", (168, 112)), "needs, zooms elsewhere", True, box)]
    backend = ScriptedBackend(script, VISIONTHINK_ZOOM)
    episodes = run_episodes(backend, requests, "oracle-zoom")
    assert [e.action for e in episodes] == ["zoom", "answer", "zoom"]
    assert episodes[0].zoom_box == (30.0, 10.0, 45.0, 25.0) == episodes[2].zoom_box
    assert episodes[0].turns[0].think == "seen" and episodes[0].well_formed  # the model's reasoning is kept
    crop = protocol.images_in(episodes[0].messages)[1]
    assert crop.size == (56, 56) and episodes[0].visual_tokens == 6 + 4
    assert ("fine", 0, True) in backend.calls and ("needs", 0, False) in backend.calls


def test_zoom_modes_refuse_what_they_cannot_run():
    requests = [Request(Image.new("RGB", (112, 112)), "q", True)]
    with pytest.raises(ValueError, match="zoom mode needs the zoom_image tool, which protocol 'visionthink' does not"):
        run_episodes(ScriptedBackend({}, VISIONTHINK), requests, "zoom")
    with pytest.raises(ValueError, match="needs `box`"):
        run_episodes(ScriptedBackend({}, VISIONTHINK_ZOOM), requests, "oracle-zoom")
    with pytest.raises(ValueError, match="needs `needs_high_res`"):
        run_episodes(ScriptedBackend({}, VISIONTHINK_ZOOM), [Request(Image.new("RGB", (112, 112)), "q")], "oracle-zoom")


def test_oracle_zoom_on_the_shipped_model(shipped_model):
    """The real engine: the crop's tokens are what the processor gives (the engine checks on prefill), the zoom
    lands on the label, and items that need no high resolution answer directly."""
    from visionthink.engines.transformers_engine import TransformersEngine

    model, processor = shipped_model
    items = synth.split_items("test", 6, seed=0)
    engine = TransformersEngine(model, processor, batch_size=6, protocol="visionthink-zoom")
    episodes = engine.run([Request(i.image, i.question, i.needs_high_res, i.label_box) for i in items], "oracle-zoom")
    for item, episode in zip(items, episodes, strict=True):
        assert episode.action == ("zoom" if item.needs_high_res else "answer")
        assert episode.full_res_visual_tokens == GRID.tokens(*item.image.size)
        if item.needs_high_res:
            crop = protocol.images_in(episode.messages)[1]
            region = zoom_region(episode.zoom_box, make_views(item.image, GRID), GRID)
            x1, y1, x2, y2 = item.label_box
            assert region[0] <= x1 and region[1] <= y1
            assert region[2] >= min(x2, item.image.width) and region[3] >= min(y2, item.image.height)
            assert episode.visual_tokens == GRID.tokens(item.image.width // 2, item.image.height // 2) + 4
            assert crop.size == (56, 56)


# ---------------------------------------------------------------- eval


def test_synth_bench_knows_the_label_box(tmp_path):
    from visionthink.data.export import write_synth_dataset
    from visionthink.eval.benchmarks import BENCHMARKS

    bench = BENCHMARKS["synth"]
    builtin = bench.load(None, limit=4)
    items = synth.split_items("test", 4, seed=0)
    assert [bench.label_box(s) for s in builtin] == [i.label_box for i in items]
    write_synth_dataset(tmp_path / "synth", n=3, seed=0, splits=["test"])
    assert [bench.label_box(s) for s in bench.load(tmp_path / "synth")] == [i.label_box for i in items[:3]]
    assert [BENCHMARKS["synth-heldout"].label_box(s) for s in BENCHMARKS["synth-heldout"].load(None, limit=4)] == [
        i.label_box for i in items]
    other = builtin[1].__class__("x-1", builtin[1].image, "q", "dots", {})
    assert bench.label_box(other) is None


def test_eval_runs_oracle_zoom(tmp_path, shipped_model):
    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.eval.runner import EvalConfig, run_eval

    model, processor = shipped_model
    engine = TransformersEngine(model, processor, batch_size=6, protocol="visionthink-zoom")
    config = EvalConfig(model=None, benches=["synth"], modes=["oracle", "oracle-zoom"], out=tmp_path / "run",
                        limit=6, progress=False)
    result = run_eval(config, engine=engine, log=lambda message: None)
    summary = result.summary["synth"]
    assert summary["oracle-zoom"]["zoom_ratio"] == pytest.approx(2 / 6)
    assert summary["oracle-zoom"]["resize_ratio"] == 0.0 and "zoom_ratio" not in summary["oracle"]
    assert summary["oracle-zoom"]["visual_tokens"] < summary["oracle"]["visual_tokens"]
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["action"] for r in records if r["mode"] == "oracle-zoom"} == {"zoom", "answer"}
    assert {r["action"] for r in records if r["mode"] == "oracle"} == {"resize", "answer"}
    assert all(len(r["zoom_box"]) == 4 for r in records if r["action"] == "zoom")
    assert not any("zoom_box" in r for r in records if r["action"] != "zoom")
    # the oracle zooms on whole low pixels covering the true box: IoU with it is high but the floor/ceil costs some
    ious = [r["zoom_iou"] for r in records if r["action"] == "zoom"]
    assert ious and all(0.6 < iou <= 1.0 for iou in ious)
    assert summary["oracle-zoom"]["zoom_hit_rate"] == 1.0
    assert summary["oracle-zoom"]["zoom_iou"] == pytest.approx(sum(ious) / len(ious))
    assert summary["oracle-zoom"]["zoom_calls_with_truth"] == len(ious)
    assert "zoom_iou" in summary["oracle-zoom"]["per_family"]["fine_small"]


def test_box_iou():
    from visionthink.eval.runner import box_iou

    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_zoom_iou_scales_the_truth_to_the_low_view():
    from visionthink.eval.runner import zoom_iou

    source = Image.new("RGB", (112, 168))
    views = make_views(source, GRID)
    episode = protocol.Episode(messages=VISIONTHINK_ZOOM.first_turn("q", views.low), answer="x", turns=[],
                               visual_tokens_per_turn=[6], full_res_visual_tokens=24,
                               calls=[ToolCall(ZOOM_TOOL.name, {"box": (14, 28, 28, 42)})])
    assert episode.zoomed and not episode.resized and episode.zoom_box == (14.0, 28.0, 28.0, 42.0)
    assert zoom_iou(episode, (28, 56, 56, 84), source.size) == pytest.approx(1.0)  # the same box, halved
    assert zoom_iou(episode, (28, 56, 84, 84), source.size) == pytest.approx(0.5)


def test_zoom_box_metrics():
    from visionthink.eval.summary import zoom_box_metrics

    assert zoom_box_metrics([{"zoom_iou": None}, {}]) == {}
    metrics = zoom_box_metrics([{"zoom_iou": 0.9}, {"zoom_iou": 0.5}, {"zoom_iou": 0.1}, {}])
    assert metrics == {"zoom_iou": pytest.approx(0.5), "zoom_hit_rate": pytest.approx(2 / 3),
                       "zoom_calls_with_truth": 3}


# ---------------------------------------------------------------- SFT data


def test_sft_zoom_flag_is_off_by_default():
    from visionthink.train.sft_data import sample_example

    for seed in range(6):
        a = sample_example(np.random.default_rng(seed), GRID, 0.5, 0.25)
        b = sample_example(np.random.default_rng(seed), GRID, 0.5, 0.25, zoom_fraction=0.0)
        assert a.messages == b.messages and a.protocol == b.protocol == "visionthink" and not a.zoomed
        assert protocol.ZOOM_USER_INSTRUCTION not in a.messages[1]["content"][1]["text"]


def test_sft_zoom_conversations_are_supervised_by_the_label_box(shipped_model):
    from visionthink.tokens import encode, visual_tokens
    from visionthink.train.sft_data import AUX_HEADS, GROUNDING_CLASSES, sample_example

    _, processor = shipped_model
    rng = np.random.default_rng(0)
    examples = [sample_example(rng, GRID, 1.0, 0.0, zoom_fraction=1.0) for _ in range(24)]
    zoomed = [e for e in examples if e.zoomed]
    assert zoomed and all(e.protocol == "visionthink-zoom" for e in examples)
    assert all(e.zoomed == (e.family != "coarse") for e in examples)  # every label question zooms here
    for example in examples:
        turns = [VISIONTHINK_ZOOM.parse_turn(protocol.assistant_text(m)) for m in example.messages
                 if m["role"] == "assistant"]
        assert [t.kind for t in turns] == (["zoom", "answer"] if example.zoomed else ["resize", "answer"])
        assert all(t.well_formed for t in turns)
        images = protocol.images_in(example.messages)
        batch = encode(processor, example.messages, protocol=VISIONTHINK_ZOOM)
        counts = visual_tokens(processor, batch["image_grid_thw"])
        assert counts == [GRID.tokens(*image.size) for image in images]
        assert [len(targets["count"]) for targets in example.aux] == counts
        assert all(set(targets) == {*AUX_HEADS, *GROUNDING_CLASSES} for targets in example.aux)
        if example.zoomed:
            crop_targets = example.aux[1]
            assert (crop_targets["pattern"] >= 0).any() and (crop_targets["legible"] == 1).any()
            assert GRID.tokens(*images[1].size) >= 4


def test_grounding_targets_say_where_tokens_and_label_are():
    from visionthink.train.sft_data import GROUNDING_SIDE, aux_targets, grounding_targets

    # a low view (scale 1/2) of 2x3 tokens of 28 px; a label at (42..54, 14..26) view px: half-token cell (3, 1)
    targets = grounding_targets((84, 28, 108, 52), 0.5, 28, 2, 3)
    assert targets["label_cell"].tolist() == [0, 1 + 1 * 2 * GROUNDING_SIDE + 3, 0, 0, 0, 0]
    assert targets["token_position"].tolist() == [0, 1, 3, 4, 6, 7]  # raster index on a 3-wide board
    assert targets["label_where"].tolist() == [1 * 2 * GROUNDING_SIDE + 3] * 6  # every token says where the label is
    assert grounding_targets((0, 84, 24, 108), 0.5, 28, 2, 3)["label_cell"].tolist() == [0, 0, 1 + 3 * 6, 0, 0, 0]
    for ignored in (grounding_targets((0, 0, 24, 24), 1.0, 28, 4, 4), grounding_targets((0, 0, 8, 8), 0.5, 28, 4, 2)):
        assert all((t == IGNORE_INDEX).all() for t in ignored.values())  # full views; views over 3 tokens a side
    for seed in range(30):
        scene = synth.make_scene(np.random.default_rng(seed), label_size="small")
        views = make_views(scene.image, GRID)
        cells = aux_targets(scene, views.low.size, GRID)["label_cell"]
        assert (cells > 0).sum() == 1
        sub_row, sub_col = divmod(int(cells.max()) - 1, 2 * GROUNDING_SIDE)
        # labels start on the 28 px grid, so on the low view's 14 px half-token grid
        assert (sub_col, sub_row) == (scene.label_box[0] // 28, scene.label_box[1] // 28)
        token = int((cells > 0).nonzero())
        cols = views.low.width // GRID.factor
        assert (token % cols, token // cols) == (sub_col // 2, sub_row // 2)
        high = aux_targets(scene, views.high.size, GRID)
        assert (high["label_cell"] == IGNORE_INDEX).all() and (high["token_position"] == IGNORE_INDEX).all()


def test_label_call_fraction_only_changes_how_often_label_questions_call():
    from visionthink.train.sft_data import sample_example

    def draws(label_call_fraction):
        return [sample_example(np.random.default_rng([3, i]), GRID, 0.5, 0.0, zoom_fraction=1.0,
                               label_call_fraction=label_call_fraction) for i in range(200)]

    plain, eager, never = draws(None), draws(1.0), draws(0.0)
    for a, b, c in zip(plain, eager, never, strict=True):  # the same scenes and questions
        assert protocol.images_in(a.messages)[0].tobytes() == protocol.images_in(b.messages)[0].tobytes()
        assert a.family == b.family == c.family
        assert a.messages[-1] == b.messages[-1] == c.messages[-1]
    label = [i for i, e in enumerate(plain) if e.family != "coarse"]
    assert all(eager[i].zoomed for i in label) and not any(never[i].zoomed or never[i].resized for i in label)
    assert 0.3 < sum(plain[i].zoomed for i in label) / len(label) < 0.7
    coarse = [i for i, e in enumerate(plain) if e.family == "coarse"]
    calls = [[run[i].resized for i in coarse] for run in (plain, eager, never)]
    assert calls[0] == calls[1] == calls[2]


def test_grounding_examples_are_the_short_form_of_a_zoom_on_the_label(shipped_model):
    from visionthink.tokens import encode_for_training
    from visionthink.train.sft_data import _draw, label_zoom_box, sample_example

    _, processor = shipped_model
    short = 0
    for i in range(40):
        example = sample_example(np.random.default_rng([5, i]), GRID, 0.5, 0.25, zoom_fraction=1.0,
                                 grounding_fraction=0.5)
        if example.with_tools:
            continue
        short += 1
        rng = np.random.default_rng([5, i])
        rng.random()  # the draw that chose the short form
        scene, _, _, views, _, _, _ = _draw(rng, GRID, 0.0)
        user, assistant = example.messages
        assert synth.question_type_of(user["content"][1]["text"]) == "pattern" and example.zoomed
        assert protocol.images_in(example.messages)[0].tobytes() == views.low.tobytes()
        turn = VISIONTHINK_ZOOM.parse_turn(protocol.assistant_text(assistant))
        assert turn.kind == "zoom" and turn.well_formed and turn.box == label_zoom_box(scene, views)
        encoded = encode_for_training(processor, example.messages, False, protocol=example.protocol)
        text = processor.tokenizer.decode(encoded["input_ids"][0])
        assert "<tools>" not in text and text.count("zoom_image") == 1  # no tool block: only the call names it
        trained = processor.tokenizer.decode(encoded["input_ids"][0][encoded["labels"][0] != IGNORE_INDEX])
        assert trained.startswith("<think>") and trained.rstrip().endswith("</tool_call><|im_end|>")
    assert 8 < short < 32


def test_short_forms_split_by_grounding_and_perception_fractions():
    from visionthink.train.sft_data import sample_example

    examples = [sample_example(np.random.default_rng([8, i]), GRID, 0.5, 0.25, zoom_fraction=1.0,
                               grounding_fraction=0.3, perception_fraction=0.3) for i in range(300)]
    grounding = [e for e in examples if not e.with_tools and e.zoomed]
    perception = [e for e in examples if not e.with_tools and not e.zoomed]
    protocol_form = [e for e in examples if e.with_tools]
    assert all(0.2 < len(part) / 300 < 0.5 for part in (grounding, perception, protocol_form))
    for example in perception:  # the short form of a direct answer, on a view that shows it
        assert [m["role"] for m in example.messages] == ["user", "assistant"]
        assert protocol.assistant_text(example.messages[1]).startswith("<think>") and example.legible
    plain = [sample_example(np.random.default_rng([8, i]), GRID, 0.5, 0.25, zoom_fraction=1.0) for i in range(20)]
    assert all(e.with_tools for e in plain)  # both fractions 0: no short forms, no extra draw


def test_box_position_is_just_before_the_box_digits(shipped_model):
    from visionthink.tokens import encode_for_training
    from visionthink.train.sft_data import box_position, sample_example

    _, processor = shipped_model
    tokenizer = processor.tokenizer
    tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
    digit_ids = tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    examples = [sample_example(np.random.default_rng([6, i]), GRID, 1.0, 0.0, zoom_fraction=1.0) for i in range(12)]
    zoomed = [e for e in examples if e.zoomed]
    assert zoomed
    for example in zoomed:
        encoded = encode_for_training(processor, example.messages, protocol=example.protocol)
        ids, labels = encoded["input_ids"][0], encoded["labels"][0]
        position = box_position(labels, tool_call_id, digit_ids)
        box = VISIONTHINK_ZOOM.parse_turn(protocol.assistant_text(example.messages[2])).box
        assert tokenizer.decode(ids[: position + 1]).endswith('"box": [')
        assert tokenizer.decode(ids[position + 1 :]).startswith(str(int(box[0])))
    plain = sample_example(np.random.default_rng(0), GRID, 0.0, 0.0, zoom_fraction=1.0)
    with pytest.raises(ValueError):
        box_position(encode_for_training(processor, plain.messages, protocol=plain.protocol)["labels"][0],
                     tool_call_id, digit_ids)


def test_sft_zoom_box_covers_the_label():
    from visionthink.train.sft_data import label_zoom_box, region_aux_targets

    for seed in range(20):
        scene = synth.make_scene(np.random.default_rng(seed), label_size="small")
        views = make_views(scene.image, GRID)
        box = label_zoom_box(scene, views)
        region = zoom_region(box, views, GRID)
        x1, y1, x2, y2 = scene.label_box
        assert region[0] <= x1 and region[1] <= y1
        assert region[2] >= min(x2, scene.image.width) and region[3] >= min(y2, scene.image.height)
        targets = region_aux_targets(scene, region, GRID)
        assert int(targets["largest"].sum()) <= 1 and int(targets["count"].sum()) <= len(scene.shapes)


# ---------------------------------------------------------------- the cost-aware group penalty

LOW, ZOOM, RESIZE = 0.25, 0.5, 1.25
"""Costs in full-resolution units on a 112x112 image: low view 4/16, low + a 2x2 crop 8/16, low + high 20/16."""


def test_cost_penalty_on_constructed_groups():
    from visionthink.rewards.rewards import cost_penalties

    def run(rows, **kwargs):
        correct = [r[0] for r in rows]
        tool = [r[1] != "answer" for r in rows]
        costs = [{"answer": LOW, "zoom": ZOOM, "resize": RESIZE}[r[1]] for r in rows]
        return [round(p, 6) for p in cost_penalties(correct, tool, costs, ["g"] * len(rows), **kwargs)]

    # low resolution is enough (r = 1/2 >= theta): tools pay Eq. 5's 0.1 and their tokens above the direct answer
    assert run([(True, "answer"), (True, "zoom"), (True, "resize"), (False, "answer")]) == [0, 0.125, 0.2, 0]
    # high resolution needed (r = 0): zoom is the cheapest approved answer, resize pays 0.1 x 0.75
    assert run([(True, "zoom"), (True, "resize"), (False, "answer"), (False, "zoom")]) == [0, 0.075, 0, 0]
    # a lucky direct guess (r = 1/8 < theta) pays Eq. 5 and sets no reference
    lucky = [(True, "answer")] + [(True, "resize")] * 6 + [(True, "zoom")]
    assert run(lucky) == [0.1] + [0.075] * 6 + [0]
    # only resizes were right: nothing cheaper was reached, so nothing is paid
    assert run([(True, "resize"), (False, "zoom"), (False, "answer")]) == [0, 0, 0]
    # all direct and right, or nobody right: nothing
    assert run([(True, "answer")] * 4) == [0] * 4 and run([(False, "resize"), (False, "zoom")]) == [0, 0]
    # cost_weight 0 is Eq. 5 alone with any tool counted as high
    assert run([(True, "answer"), (True, "zoom"), (True, "resize")], cost_weight=0.0) == [0, 0.1, 0.1]
    assert run([(True, "zoom"), (True, "resize")], cost_weight=0.4) == [0, 0.3]


def test_cost_penalty_groups_are_independent_and_order_free():
    from visionthink.rewards.rewards import cost_penalties

    correct = [True, True, True, True, False, True]
    tool = [False, True, True, True, True, False]
    costs = [LOW, RESIZE, ZOOM, RESIZE, ZOOM, LOW]
    groups = ["a", "a", "b", "b", "b", "c"]
    amounts = cost_penalties(correct, tool, costs, groups)
    # a: r = 1/2, the resize pays 0.1 + 0.1 x 1.0; b: r = 0, zoom is the reference; c: alone, nothing
    assert amounts == pytest.approx([0.0, 0.2, 0.0, 0.075, 0.0, 0.0])
    order = [5, 3, 0, 4, 1, 2]
    shuffled = cost_penalties(*([column[i] for i in order] for column in (correct, tool, costs, groups)))
    assert shuffled == [amounts[i] for i in order]


def test_cost_penalty_properties():
    import random

    from visionthink.rewards.rewards import cost_penalties, resize_penalties

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 12)
        actions = [rng.choice(["answer", "zoom", "resize"]) for _ in range(n)]
        correct = [rng.random() < 0.6 for _ in range(n)]
        groups = [rng.randint(0, 2) for _ in range(n)]
        tool = [a != "answer" for a in actions]
        costs = [{"answer": LOW, "zoom": rng.choice([0.5, 0.625, 0.75]), "resize": RESIZE}[a] for a in actions]
        amounts = cost_penalties(correct, tool, costs, groups)
        assert all(p >= 0 for p in amounts) and all(p == 0 for p, ok in zip(amounts, correct, strict=True) if not ok)
        assert all(p <= 0.1 + 0.1 * (RESIZE - LOW) + 1e-12 for p in amounts)
        assert cost_penalties(correct, tool, costs, groups, cost_weight=0.0) == resize_penalties(
            correct, tool, groups, variant="paper")
        base = resize_penalties(correct, tool, groups, variant="paper")
        for i in range(n):  # among approved correct rollouts of a group, the cheaper never pays more
            for j in range(n):
                if (groups[i] == groups[j] and correct[i] and correct[j] and base[i] == base[j] == 0
                        and costs[i] <= costs[j]):
                    assert amounts[i] <= amounts[j] + 1e-12


def test_cost_penalty_refuses_bad_input():
    from visionthink.rewards.rewards import cost_penalties, total_rewards

    with pytest.raises(ValueError, match="differ in length"):
        cost_penalties([True], [False], [0.25, 0.5], ["g"])
    with pytest.raises(ValueError, match="finite"):
        cost_penalties([True], [False], [float("nan")], ["g"])
    with pytest.raises(ValueError, match="cost_weight"):
        cost_penalties([True], [False], [0.25], ["g"], cost_weight=-1)
    with pytest.raises(ValueError, match="needs `costs`"):
        total_rewards([1.0], [0.5], [False], ["g"], variant="cost")


def test_cost_variant_through_episode_rewards():
    """Zoom episodes through the reward assembly: the cost variant reads each episode's visual tokens; the paper's
    variants are untouched (a zoom is not `resized` for them)."""
    from visionthink.rewards.judges import RuleJudge
    from visionthink.rewards.rewards import PENALTY_VARIANTS, grade_episodes, group_rewards, visual_cost

    assert "cost" not in PENALTY_VARIANTS

    def episode(call_text, tool, image, answer):
        messages = [*VISIONTHINK_ZOOM.first_turn("What pattern?", views.low), protocol.assistant_turn(call_text),
                    protocol.tool_turn(tool, image), protocol.assistant_turn(protocol.answer_text("t", answer))]
        turns = [VISIONTHINK_ZOOM.parse_turn(protocol.assistant_text(m)) for m in messages if m["role"] == "assistant"]
        return protocol.make_episode(messages, turns, lambda image: GRID.tokens(*image.size), 16)

    views = views_of(112, 112)
    zoom = zoom_text("t", [10, 10, 24, 24]), ZOOM_TOOL, zoom_crop((10, 10, 24, 24), views, GRID)
    episodes = [episode(*zoom, "dots"), episode(resize_text("t"), RESIZE_TOOL, views.high, "dots"),
                episode(*zoom, "checker")]
    assert [visual_cost(e) for e in episodes] == [0.5, 1.25, 0.5]
    assert [e.action for e in episodes] == ["zoom", "resize", "zoom"] and all(e.well_formed for e in episodes)
    truths, questions, groups = ["dots"] * 3, ["What pattern?"] * 3, [0, 0, 0]
    graded = grade_episodes(episodes, truths, questions, RuleJudge())
    cost = group_rewards(graded, groups, variant="cost")
    assert cost.penalty == pytest.approx([0.0, 0.075, 0.0])
    assert cost.total == pytest.approx([1.5, 1.5 - 0.075, 0.5])
    alone = group_rewards(graded, groups, variant="cost", cost_weight=0.0)
    assert alone.penalty == [0.0, 0.0, 0.0] and alone.total == pytest.approx([1.5, 1.5, 0.5])
    paper = group_rewards(graded, groups, variant="paper")
    assert paper.penalty == pytest.approx([0.0, 0.1, 0.0])  # unchanged: a zoom counts as direct there
