"""`visionthink_escalate_below` on the server: a per-request answer-confidence threshold, the server's default for
it, its refusals, and what the reply reports (`answer_confidence`, `escalated`), on the shipped ladder model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LADDER_DIR as LADDER  # tests/ is on sys.path
from conftest import REPO
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
def engine() -> TransformersEngine:
    return TransformersEngine.from_pretrained(LADDER)


@pytest.fixture(scope="module")
def count():
    """The count example (a coarse question answered from the low view) and the ladder model's greedy episode."""
    entry = next(e for e in json.loads((EXAMPLES / "questions.json").read_text()) if e["title"] == "count")
    return Image.open(EXAMPLES / entry["file"]).convert("RGB"), entry["question"], EXAMPLES / entry["file"]


@pytest.fixture(scope="module")
def greedy(engine, count):
    image, question, _ = count
    return engine.run([Request(image, question)], "zoom")[0]


@pytest.fixture(scope="module")
def server(engine):
    with serving(engine, ServeConfig(model_name="ladder")) as running:
        yield running


def ask(base: str, image: Image.Image, question: str, **extra) -> tuple[int, dict]:
    status, reply, _ = call(base, "POST", PATH, chat_body(data_url(image), question, **extra), key=None)
    return status, reply


def test_an_answer_under_the_threshold_is_withdrawn_for_a_resize(server, count, greedy):
    image, question, _ = count
    confidence = greedy.answer_confidence
    assert greedy.action == "answer" and 0.05 < confidence < 0.95
    status, above = ask(server.url, image, question, visionthink_escalate_below=round(confidence - 0.05, 3))
    assert status == 200, above
    info = above["visionthink"]
    assert (info["action"], info["escalated"], info["answer"]) == ("answer", False, greedy.answer)
    assert info["answer_confidence"] == pytest.approx(confidence, abs=1e-4)
    status, below = ask(server.url, image, question, visionthink_escalate_below=round(confidence + 0.05, 3))
    assert status == 200, below
    info = below["visionthink"]
    assert (info["action"], info["escalated"], info["resized"]) == ("resize", True, True)
    assert info["escalate_below"] == round(confidence + 0.05, 3)
    assert info["visual_tokens"] == below["usage"]["visual_tokens"] == greedy.visual_tokens + info[
        "full_res_visual_tokens"]
    assert "<answer>" not in info["turns"][0] and below["choices"][0]["message"]["content"] == info["answer"]


def test_no_threshold_leaves_the_greedy_episode(server, count, greedy):
    image, question, _ = count
    status, reply = ask(server.url, image, question)
    assert status == 200, reply
    info = reply["visionthink"]
    assert (info["answer"], info["escalated"], info["escalate_below"]) == (greedy.answer, False, None)
    assert info["answer_confidence"] == pytest.approx(greedy.answer_confidence, abs=1e-4)


@pytest.mark.parametrize("value, mode", [(1.5, None), (-0.1, None), ("0.5", None), (True, None), (0.5, "low"),
                                         (0.5, "full")])
def test_bad_thresholds_are_refused(server, count, value, mode):
    image, question, _ = count
    extra = {"visionthink_mode": mode} if mode else {}
    status, reply = ask(server.url, image, question, visionthink_escalate_below=value, **extra)
    assert status == 400, reply
    assert (reply["error"]["code"], reply["error"]["param"]) == ("invalid_parameter", "visionthink_escalate_below")


def test_the_servers_default_threshold(engine, count, greedy):
    """`ServeConfig.escalate_below` applies to requests that name none; null lets answers stand; `ask --server`
    sends its own."""
    image, question, path = count
    with serving(engine, ServeConfig(escalate_below=1.0)) as running:
        status, reply = ask(running.url, image, question)
        assert status == 200 and reply["visionthink"]["escalated"] is True
        status, reply = ask(running.url, image, question, visionthink_escalate_below=None)
        assert status == 200 and reply["visionthink"]["escalated"] is False
        assert reply["visionthink"]["answer"] == greedy.answer
        record = ask_server(running.url, str(path), question, escalate_below=0.0)
        assert (record["escalated"], record["escalate_below"], record["action"]) == (False, 0.0, "answer")
    with pytest.raises(VisionThinkError, match=r"answer-confidence threshold must be a number in \[0, 1\]"):
        create_app(engine, ServeConfig(escalate_below=1.5))


def test_an_engine_that_cannot_read_probabilities_refuses_escalation(engine, count):
    from visionthink.engines.remote import RemoteEngine

    remote = RemoteEngine("http://127.0.0.1:9/v1", model="m", processor=engine.processor, attempts=1, timeout=2)
    with pytest.raises(VisionThinkError, match="transformers or vllm engine"):
        create_app(remote, ServeConfig(escalate_below=0.5), context=4096)
    image, question, _ = count
    with serving(remote, context=4096) as running:
        status, reply = ask(running.url, image, question, visionthink_escalate_below=0.5)
        assert status == 400, reply
        assert (reply["error"]["code"], reply["error"]["param"]) == ("unsupported_parameter",
                                                                       "visionthink_escalate_below")


def test_the_vllm_engine_may_escalate_and_eval_checks_each_engine_by_its_abilities(engine):
    from visionthink.engines.factory import EngineOptions
    from visionthink.engines.vllm_engine import VLLMEngine
    from visionthink.eval.runner import EvalConfig, _check_threshold_options

    in_process = VLLMEngine(None, engine.processor)  # the LLM is not touched before a request
    create_app(in_process, ServeConfig(escalate_below=0.5), context=4096)
    with pytest.raises(VisionThinkError, match="needs the transformers engine"):
        create_app(in_process, ServeConfig(tool_threshold=0.5), context=4096)
    def config(name: str, **thresholds) -> EvalConfig:
        return EvalConfig(None, ["ladder"], ["zoom"], Path("unused"), engine=EngineOptions(engine=name), **thresholds)

    for name, escalates in (("transformers", True), ("vllm", True), ("remote", False)):
        asked = config(name, escalate_below=[0.5])
        if escalates:
            _check_threshold_options(asked)
        else:
            with pytest.raises(VisionThinkError, match="transformers or vllm engine"):
                _check_threshold_options(asked)
    with pytest.raises(VisionThinkError, match="need the transformers engine"):
        _check_threshold_options(config("vllm", tool_threshold=0.5))
