"""`visionthink_mode: zoom` on the real server (uvicorn on 127.0.0.1) with the shipped tiny model served as a zoom
model (or beside the default one): the engine per profile, the reply's action, box, crop and token accounting, and the
refusals."""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import full_tokens  # tests/ is on sys.path
from PIL import Image
from test_serve import call, chat_body, data_url, serving

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.base import Generated
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import make_views, zoom_region
from visionthink.serve.config import ServeConfig
from visionthink.tools.zoom import oracle_box

KEY = "zoom-key"


def config() -> ServeConfig:
    return ServeConfig(model_name="tiny", api_key=KEY, max_batch=8, batch_wait_ms=10, timeout=60)


class FirstTurnZooms(TransformersEngine):
    """The zoom engine, with each first turn replaced by the canonical zoom call on the box given for its question
    (the model's `<think>` kept, as `oracle-zoom` does); the second turn is the model's own, over the crop."""

    def __init__(self, model, processor, boxes: dict[str, tuple[int, int, int, int]]):
        super().__init__(model, processor, protocol="visionthink-zoom")
        self.boxes = boxes

    def session(self, call=None):
        return _ZoomingSession(super().session(call), self)


class _ZoomingSession:
    def __init__(self, inner, engine: FirstTurnZooms):
        self.inner, self.engine = inner, engine

    def generate(self, rows, conversations, forbid_call, **options) -> list[Generated]:
        outputs = self.inner.generate(rows, conversations, forbid_call, **options)  # e.g. the first turn's thresholds
        for output, messages in zip(outputs, conversations, strict=True):
            question = protocol.assistant_text(messages[1]).split("\n")[0]
            if not any(m["role"] == "assistant" for m in messages) and question in self.engine.boxes:
                think = self.engine.protocol.parse_turn(output.text).think or ""
                output.text = self.engine.protocol.call_text(think, "zoom_image",
                                                             {"box": self.engine.boxes[question]})
        return outputs


@pytest.fixture(scope="module")
def items():
    """Two small-label items (they need high resolution) and one coarse item."""
    found = synth.split_items("test", 12, seed=0)
    small = [i for i in found if i.family == "fine_small"][:2]
    return [*small, next(i for i in found if i.family == "coarse")]


@pytest.fixture(scope="module")
def server(shipped_model):
    """The shipped weights served as a zoom model (a model declaring `visionthink-zoom`)."""
    with serving(TransformersEngine(*shipped_model, protocol="visionthink-zoom"), config()) as running:
        yield running


def ask(server, item, mode: str = "zoom", **extra) -> tuple[int, dict]:
    status, reply, _ = call(server.url, "POST", "/v1/chat/completions",
                            chat_body(data_url(item.image), item.question, visionthink_mode=mode, **extra), key=KEY)
    return status, reply


def test_zoom_requests_run_the_zoom_profile_on_the_shared_model(server, shipped_model, items):
    """The model decides (untrained for zoom, so any action); the reply is the zoom engine's episode and its
    accounting adds up."""
    expected = TransformersEngine(*shipped_model, protocol="visionthink-zoom").run(
        [Request(i.image, i.question) for i in items], "zoom")
    for item, episode in zip(items, expected, strict=True):
        status, reply = ask(server, item)
        assert status == 200, reply
        info, usage = reply["visionthink"], reply["usage"]
        assert info["mode"] == "zoom" and info["action"] == episode.action
        assert info["answer"] == episode.answer and info["turns"] == [
            protocol.assistant_text(m) for m in episode.messages if m["role"] == "assistant"]
        assert info["zoom_box"] == (list(episode.zoom_box) if episode.zoomed else None)
        assert usage["prompt_tokens"] == episode.prompt_tokens
        assert usage["visual_tokens"] == sum(info["visual_tokens_per_turn"]) == episode.visual_tokens
        assert usage["full_res_visual_tokens"] == full_tokens(item.image)
        assert info["visual_tokens_per_turn"][0] == full_tokens(item.image) // 4  # the low view first
        if episode.action == "answer":
            assert len(info["visual_tokens_per_turn"]) == 1
    worker = server.app.state.worker
    assert worker.engine_for("zoom") is worker.engine  # the served zoom model runs zoom itself
    plain = worker.engine_for("visionthink")  # resize only: the same weights under visionthink
    assert plain is worker.engine_for("visionthink") and plain is not worker.engine  # built once
    assert plain.model is worker.engine.model and plain.processor is worker.engine.processor
    assert worker.engine.protocol.name == "visionthink-zoom" and plain.protocol.name == "visionthink"


def test_the_budget_counts_a_zoom_prompt_as_the_zoom_engine_feeds_it(server, items):
    """A zoom request's first prompt is counted under the zoom profile: the tokens the zoom engine feeds before
    the model writes (the same first turn as `low` under that profile), longer than the `visionthink` one."""
    service = server.app.state.server.service
    engine = server.app.state.worker.engine_for("zoom")
    for item in items:
        episode = engine.run([Request(item.image, item.question)], "low")[0]
        fed_prompt = len(episode.fed_token_ids) - episode.generated_tokens
        counted = service.budget.visionthink(item.question, item.image.size, "zoom", 8, service.profile_for("zoom"))
        assert counted == fed_prompt
        assert counted > service.budget.visionthink(item.question, item.image.size, "visionthink", 8,
                                                    service.profile_for("visionthink"))


@pytest.fixture(scope="module")
def zooming_server(shipped_model, items):
    """A server whose zoom engine zooms on the label of each small-label item."""
    boxes = {}
    for item in items[:2]:
        low = make_views(item.image, shipped_model[1].grid).low
        boxes[item.question] = oracle_box(item.label_box, item.image.size, low.size)
    zoom = FirstTurnZooms(*shipped_model, boxes)
    with serving(TransformersEngine(*shipped_model), config(), zoom_engine=zoom) as running:
        yield running


def test_a_zoom_reply_carries_the_action_box_crop_and_tokens(zooming_server, shipped_model, items):
    """A zoom through the server is the loop's `oracle-zoom` on the label box: same turns and answer; the reply
    locates the crop, returns it pixel for pixel and counts low view + crop."""
    grid = shipped_model[1].grid
    engine = TransformersEngine(*shipped_model, protocol="visionthink-zoom")
    for item in items[:2]:
        expected = engine.run([Request(item.image, item.question, True, item.label_box)], "oracle-zoom")[0]
        status, reply = ask(zooming_server, item, visionthink_return_image=True)
        assert status == 200, reply
        info, usage = reply["visionthink"], reply["usage"]
        assert info["action"] == "zoom" and info["mode"] == "zoom" and info["resized"] is False
        assert reply["choices"][0]["message"]["resized"] is False
        assert info["zoom_box"] == list(expected.zoom_box)
        assert info["turns"] == [protocol.assistant_text(m) for m in expected.messages if m["role"] == "assistant"]
        assert info["answer"] == expected.answer
        views = make_views(item.image, grid)
        region = zoom_region(expected.zoom_box, views, grid)
        assert info["zoom_region"] == list(region) and info["high_res_image_size"] == list(views.high.size)
        x1, y1, x2, y2 = item.label_box  # synth images are on the grid: high-view pixels are image pixels
        assert region[0] <= x1 and region[1] <= y1 and region[2] >= x2 and region[3] >= y2
        crop = Image.open(io.BytesIO(base64.b64decode(info["zoom_image"].split(",", 1)[1]))).convert("RGB")
        assert crop.size == (region[2] - region[0], region[3] - region[1]) == (56, 56)
        assert crop.tobytes() == views.high.crop(region).tobytes()
        low_tokens = full_tokens(item.image) // 4
        assert info["visual_tokens_per_turn"] == [low_tokens, 4] == expected.visual_tokens_per_turn
        assert usage["visual_tokens"] == low_tokens + 4
        assert usage["full_res_visual_tokens"] == full_tokens(item.image)
    coarse = items[2]  # no box scripted for it: the model's own first turn
    status, reply = ask(zooming_server, coarse, visionthink_return_image=True)
    assert status == 200, reply
    info = reply["visionthink"]
    assert ("zoom_image" in info) == ("zoom_region" in info) == (info["action"] == "zoom")


def test_a_streamed_zoom_reply_ends_with_the_same_extras(zooming_server, items):
    item = items[0]
    status, body, _ = call(zooming_server.url, "POST", "/v1/chat/completions",
                           chat_body(data_url(item.image), item.question, visionthink_mode="zoom", stream=True),
                           key=KEY)
    assert status == 200
    chunks = [json.loads(line[6:]) for line in body.split("\n") if line.startswith("data: {")]
    extras = chunks[-1]["visionthink"]
    assert extras["action"] == "zoom" and len(extras["zoom_box"]) == 4 and len(extras["zoom_region"]) == 4
    assert "zoom_image" not in extras  # only with visionthink_return_image


def test_oracles_are_not_served(server, items):
    for mode in ("oracle", "oracle-zoom"):
        status, reply = ask(server, items[0], mode=mode)
        assert status == 400 and reply["error"]["param"] == "visionthink_mode"
        assert "not served" in reply["error"]["message"]


@pytest.mark.parametrize(("protocol", "name"), [(None, "visionthink"), ("release", "release")])
def test_a_model_without_zoom_refuses_zoom_with_400(shipped_model, items, protocol, name):
    """The shipped model declares no zoom tool, nor does `release`: a zoom request is refused in one line, not run
    untrained, and the other modes still run."""
    with serving(TransformersEngine(*shipped_model, protocol=protocol), config()) as running:
        status, reply = ask(running, items[0])
        assert status == 400, reply
        error = reply["error"]
        assert error["code"] == "invalid_parameter" and error["param"] == "visionthink_mode"
        assert error["message"].startswith("visionthink_mode zoom needs the zoom_image tool, which this model's "
                                           f"protocol {name!r} does not offer") and "\n" not in error["message"]
        status, reply = ask(running, items[0], mode="low")
        assert status == 200, reply
