"""`visionthink_tool_threshold`: a per-request threshold on P(tool), the server's default for it, its refusals, and
what the reply reports (`p_tool`, `tool_threshold`, the view the model got)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import REPO  # tests/ is on sys.path
from PIL import Image
from test_serve import call, chat_body, data_url, serving

from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.serve.app import create_app
from visionthink.serve.client import ask_server
from visionthink.serve.config import ServeConfig

EXAMPLES = REPO / "examples"
PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def unsure():
    """The example on which the shipped model is unsure whether to ask (its image, question and greedy episode)."""
    entry = next(e for e in json.loads((EXAMPLES / "questions.json").read_text()) if e["title"] == "unsure")
    image = Image.open(EXAMPLES / entry["file"]).convert("RGB")
    return image, entry["question"]


@pytest.fixture(scope="module")
def greedy(shipped_model, unsure):
    image, question = unsure
    return TransformersEngine(*shipped_model).run([Request(image, question)], "visionthink")[0]


@pytest.fixture(scope="module")
def server(shipped_model):
    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny")) as running:
        yield running


def ask(base: str, image: Image.Image, question: str, **extra) -> tuple[int, dict]:
    status, reply, _ = call(base, "POST", PATH, chat_body(data_url(image), question, **extra), key=None)
    return status, reply


def test_the_threshold_decides_on_either_side_of_p_tool(server, unsure, greedy):
    image, question = unsure
    p = greedy.p_tool
    assert 0.1 < p < 0.9 and not greedy.resized
    status, below = ask(server.url, image, question, visionthink_tool_threshold=round(p - 0.05, 2),
                        visionthink_return_image=True)
    assert status == 200, below
    info = below["visionthink"]
    assert info["resized"] is True and info["action"] == "resize"
    assert info["tool_threshold"] == round(p - 0.05, 2) and info["p_tool"] == pytest.approx(p, abs=1e-4)
    assert info["visual_tokens"] == below["usage"]["visual_tokens"] == 5 * info["full_res_visual_tokens"] // 4
    # the view it got: the full-resolution image, beside the low one it saw first
    assert info["high_res_image_size"] == list(image.size)
    high = Image.open(io.BytesIO(base64.b64decode(info["high_res_image"].split(",", 1)[1])))
    assert high.size == image.size and high.convert("RGB").tobytes() == image.tobytes()
    assert info["first_image_size"] == [image.width // 2, image.height // 2]

    status, above = ask(server.url, image, question, visionthink_tool_threshold=round(p + 0.05, 2))
    assert status == 200, above
    info = above["visionthink"]
    assert info["resized"] is False and info["tool_threshold"] == round(p + 0.05, 2)
    assert info["p_tool"] == pytest.approx(p, abs=1e-4)
    assert "high_res_image" not in info and "high_res_image_size" not in info
    assert above["usage"]["visual_tokens"] == info["full_res_visual_tokens"] // 4


def test_no_threshold_is_the_greedy_episode(server, unsure, greedy):
    image, question = unsure
    for extra in ({}, {"visionthink_tool_threshold": None}):
        status, reply = ask(server.url, image, question, **extra)
        assert status == 200, reply
        info = reply["visionthink"]
        assert info["turns"] == greedy.summary()["turns"] and info["tool_threshold"] is None
        assert info["p_tool"] == pytest.approx(greedy.p_tool, abs=1e-4)


def test_low_and_full_modes_record_no_decision(server, unsure):
    image, question = unsure
    for mode in ("low", "full"):
        status, reply = ask(server.url, image, question, visionthink_mode=mode, visionthink_tool_threshold=None)
        assert status == 200, reply
        assert reply["visionthink"]["p_tool"] is None and reply["visionthink"]["tool_threshold"] is None


BAD = {
    "over 1": (1.5, None),
    "negative": (-0.1, None),
    "a string": ("0.5", None),
    "true": (True, None),
    "in low mode": (0.5, "low"),
    "in full mode": (0.5, "full"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_thresholds_are_refused(server, unsure, case):
    value, mode = BAD[case]
    image, question = unsure
    extra = {"visionthink_mode": mode} if mode else {}
    status, reply = ask(server.url, image, question, visionthink_tool_threshold=value, **extra)
    assert status == 400, reply
    assert reply["error"]["code"] == "invalid_parameter"
    assert reply["error"]["param"] == "visionthink_tool_threshold"


def test_the_servers_default_threshold(shipped_model, unsure, greedy):
    """`ServeConfig.tool_threshold` applies to requests that name none; null asks for the greedy decision; the
    modes without a decision ignore the default."""
    image, question = unsure
    with serving(TransformersEngine(*shipped_model), ServeConfig(tool_threshold=0.0)) as running:
        status, reply = ask(running.url, image, question)
        assert status == 200 and reply["visionthink"]["resized"] is True
        assert reply["visionthink"]["tool_threshold"] == 0.0
        status, reply = ask(running.url, image, question, visionthink_tool_threshold=None)
        assert status == 200 and reply["visionthink"]["resized"] is greedy.resized is False
        assert reply["visionthink"]["tool_threshold"] is None
        status, reply = ask(running.url, image, question, visionthink_mode="low")
        assert status == 200 and reply["visionthink"]["tool_threshold"] is None
        path = EXAMPLES / "unsure-label.png"
        record = ask_server(running.url, str(path), question, tool_threshold=1.0)
        assert record["resized"] is False and record["tool_threshold"] == 1.0
        assert record["p_tool"] == pytest.approx(greedy.p_tool, abs=1e-4)
    with pytest.raises(VisionThinkError, match=r"\[0, 1\]"):
        create_app(TransformersEngine(*shipped_model), ServeConfig(tool_threshold=1.5))


def test_an_engine_that_cannot_honour_a_threshold_refuses_it(shipped_model, unsure):
    """The remote engine reads no probabilities: a request with a threshold is a 400 before any model work (the
    remote server here does not exist), and a server default threshold is refused at start."""
    from visionthink.engines.remote import RemoteEngine

    remote = RemoteEngine("http://127.0.0.1:9/v1", model="m", processor=shipped_model[1], attempts=1, timeout=2)
    with pytest.raises(VisionThinkError, match="transformers engine"):
        create_app(remote, ServeConfig(tool_threshold=0.5), context=4096)
    image, question = unsure
    with serving(remote, context=4096) as running:
        status, reply = ask(running.url, image, question, visionthink_tool_threshold=0.5)
        assert status == 400, reply
        assert reply["error"]["code"] == "unsupported_parameter"
        assert reply["error"]["param"] == "visionthink_tool_threshold"
        assert "transformers" in reply["error"]["message"]


def test_zoom_mode_takes_a_threshold_too(shipped_model_dir, unsure):
    """In `zoom` mode (on the zoom model, which declares visionthink-zoom) the decision is between answering and
    either tool: T = 0 makes the first turn open a tool call, T = 1 an answer."""
    image, question = unsure
    engine = TransformersEngine.from_pretrained(shipped_model_dir.parent / "tiny-synth-zoom")
    with serving(engine, ServeConfig(model_name="zoom")) as zooming:
        status, reply = ask(zooming.url, image, question, visionthink_mode="zoom", visionthink_tool_threshold=0.0)
        assert status == 200, reply
        info = reply["visionthink"]
        assert info["tool_threshold"] == 0.0 and 0 < info["p_tool"] <= 1
        assert info["action"] in ("resize", "zoom") and "<answer>" not in info["turns"][0]
        status, reply = ask(zooming.url, image, question, visionthink_mode="zoom", visionthink_tool_threshold=1.0)
        assert status == 200, reply
        assert reply["visionthink"]["action"] == "answer" and "<answer>" in reply["visionthink"]["turns"][0]
