"""`visionthink_escalate_below` on the server: a per-request answer-confidence threshold, the server's default for
it, its refusals, and what the reply reports (`answer_confidence`, `escalated`), on the shipped ladder model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import LADDER_DIR as LADDER  # tests/ is on sys.path
from conftest import REPO, BlindBackend, QuietHandler, http_server
from PIL import Image
from test_serve import call, chat_body, data_url, serving

from visionthink import protocol
from visionthink.engines.confidence import answer_confidence
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


def _between(confidences: list[float]) -> float:
    """A threshold in the widest gap between two of the middle half of `confidences`, so that an engine computing
    them in another order (rounding) cannot move an answer across it."""
    ranked = sorted(confidences)
    middle = range(len(ranked) // 4, 3 * len(ranked) // 4)
    i = max(middle, key=lambda k: ranked[k + 1] - ranked[k])
    return (ranked[i] + ranked[i + 1]) / 2


def test_the_remote_engine_escalates_through_a_server_that_returns_logprobs(engine, server):
    """Over this project's server (raw mode returns `logprobs`), the remote engine withdraws exactly the answers the
    local engine withdraws."""
    from visionthink.data import synth
    from visionthink.engines.remote import RemoteEngine

    items = synth.ladder_items("test", 24, wordings="heldout")
    plain = engine.run([Request(i.image, i.question) for i in items], "zoom")
    below = _between([e.answer_confidence for e in plain if e.answer_confidence is not None])
    requests = [Request(i.image, i.question, escalate_below=below) for i in items]
    local = engine.run(requests, "zoom")
    assert 0 < sum(e.escalated for e in local) < len(items)
    remote = RemoteEngine(server.url, processor=engine.processor, protocol="visionthink-zoom", max_workers=4)
    for mine, theirs in zip(local, remote.run(requests, "zoom"), strict=True):
        assert (theirs.escalated, theirs.answer, theirs.action, theirs.visual_tokens) == (
            mine.escalated, mine.answer, mine.action, mine.visual_tokens)
        assert theirs.answer_confidence == pytest.approx(mine.answer_confidence, abs=1e-4) \
            if mine.answer_confidence is not None else theirs.answer_confidence is None
    unasked = remote.run([Request(i.image, i.question) for i in items[:4]], "zoom")
    assert [e.answer_confidence for e in unasked] == [None] * 4  # no escalation: no logprobs asked


def test_raw_mode_returns_each_written_tokens_logprob(engine, server, count, greedy):
    from visionthink.engines.remote import RemoteEngine

    image, question, _ = count
    remote = RemoteEngine(server.url, processor=engine.processor, protocol="visionthink-zoom")
    body = remote._body("ladder", greedy.messages[:2], {}, forbid_call=False, logprobs=True)
    status, reply, _ = call(server.url, "POST", PATH, body, key=None)
    assert status == 200, reply
    choice = reply["choices"][0]
    steps = choice["logprobs"]["content"]
    written = protocol.assistant_text(greedy.messages[2])
    assert "".join(step["token"] for step in steps) == choice["message"]["content"] == written
    assert len(steps) == reply["usage"]["completion_tokens"] - 1  # all but the closing stop token
    assert all(step["logprob"] <= 0 and step["top_logprobs"] == [] for step in steps)
    assert bytes(steps[0]["bytes"]).decode() == steps[0]["token"]
    pieces, probs = [s["token"] for s in steps], [math.exp(s["logprob"]) for s in steps]
    assert answer_confidence(pieces, probs) == pytest.approx(greedy.answer_confidence, abs=1e-4)
    for extra, param in (({"stream": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs")):
        status, reply, _ = call(server.url, "POST", PATH, {**body, **extra}, key=None)
        assert status == 400 and reply["error"]["param"] == param, reply
    status, reply = ask(server.url, image, question, logprobs=True)  # a VisionThink mode: no logprobs there
    assert status == 400 and reply["error"]["param"] == "logprobs", reply


def test_a_server_without_logprobs_fails_an_escalating_run_loudly(engine, count):
    from visionthink.engines.remote import RemoteEngine, RemoteEngineError

    class NoLogprobs(QuietHandler):  # as transformers serve, which ignores `logprobs`
        def do_GET(self):
            self.reply(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            message = {"role": "assistant", "content": "<think>Count the shapes.</think>\n<answer>2</answer>"}
            self.reply(200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": {}})

    image, question, _ = count
    with http_server(NoLogprobs) as stub:
        remote = RemoteEngine(stub.url, model="m", grid=engine.processor.grid, protocol="visionthink-zoom",
                              attempts=1)
        with pytest.raises(RemoteEngineError, match="no token log-probabilities"):
            remote.run([Request(image, question, escalate_below=0.5)], "zoom")
        episode, = remote.run([Request(image, question)], "zoom")  # not escalating: the run goes on
        assert episode.answer == "2" and episode.answer_confidence is None


def test_every_engine_may_escalate_and_eval_checks_each_engine_by_its_abilities(engine):
    from visionthink.engines.factory import EngineOptions
    from visionthink.engines.vllm_engine import VLLMEngine
    from visionthink.eval.runner import EvalConfig, _check_threshold_options

    in_process = VLLMEngine(None, engine.processor)  # the LLM is not touched before a request
    create_app(in_process, ServeConfig(escalate_below=0.5), context=4096)
    with pytest.raises(VisionThinkError, match="needs the transformers engine"):
        create_app(in_process, ServeConfig(tool_threshold=0.5), context=4096)
    def config(name: str, **thresholds) -> EvalConfig:
        return EvalConfig(None, ["ladder"], ["zoom"], Path("unused"), engine=EngineOptions(engine=name), **thresholds)

    for name in ("transformers", "vllm", "remote"):
        _check_threshold_options(config(name, escalate_below=[0.5]))
    with pytest.raises(VisionThinkError, match="reads the answer's token probabilities"):
        _check_threshold_options(config("transformers", escalate_below=[0.5]), BlindBackend())
    with pytest.raises(VisionThinkError, match="need the transformers engine"):
        _check_threshold_options(config("vllm", tool_threshold=0.5))
