"""The remote engine against this project's server in raw mode, over loopback, and raw mode itself."""

from __future__ import annotations

import base64
import io
import json
from contextlib import contextmanager

import pytest
from conftest import QuietHandler, full_tokens, http_server, resize_text  # tests/ is on sys.path
from PIL import Image
from test_serve import call, serving

from visionthink import protocol
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.remote import RemoteEngine, RemoteEngineError, png_data_url, reply_text
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.images import load_image, make_views
from visionthink.serve.app import ServeConfig
from visionthink.serve.replies import split_tool_calls
from visionthink.tools import RESIZE

KEY = "remote-key"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engine(shipped_model):
    return TransformersEngine(*shipped_model)


@pytest.fixture(scope="module")
def server(shipped_model):
    with serving(TransformersEngine(*shipped_model), ServeConfig(model_name="tiny-remote", api_key=KEY, max_batch=8)) \
            as running:
        yield running


@pytest.fixture(scope="module")
def requests_(synth_items):
    return [Request(item.image, item.question, item.needs_high_res) for item in synth_items]


def post(server, body: dict) -> dict:
    status, reply, _ = call(server.url, "POST", CHAT, body, key=KEY)
    assert status == 200, reply
    return reply


@pytest.mark.parametrize("mode", ["visionthink", "oracle", "low", "full"])
def test_remote_episodes_equal_local_ones(server, engine, requests_, mode):
    """With the served folder's processor: bans through logit_bias, and every reply's prompt length checked."""
    remote = RemoteEngine(server.url, api_key=KEY, processor=engine.processor, max_workers=6)
    assert remote.model == "tiny-remote"  # asked from /v1/models
    got = remote.run(requests_, mode)
    want = engine.run(requests_, mode)
    if mode in ("visionthink", "oracle"):
        assert any(e.resized for e in want)
    for g, w in zip(got, want, strict=True):
        assert g.summary()["turns"] == w.summary()["turns"]
        assert (g.answer, g.resized, g.well_formed) == (w.answer, w.resized, w.well_formed)
        assert g.visual_tokens_per_turn == w.visual_tokens_per_turn
        assert g.full_res_visual_tokens == w.full_res_visual_tokens
        assert g.generated_tokens == w.generated_tokens
        assert g.prompt_tokens == w.prompt_tokens
        assert [m["role"] for m in g.messages] == [m["role"] for m in w.messages]


def test_structured_tool_calls_also_complete_the_protocol(server, engine, requests_):
    remote = RemoteEngine(server.url + "/v1", model="tiny-remote", api_key=KEY, grid=engine.processor.grid,
                          assistant_tool_calls="structured")
    episodes = remote.run(requests_, "oracle")
    for request, episode in zip(requests_, episodes, strict=True):
        assert episode.resized == request.needs_high_res
        assert [m["role"] for m in episode.messages][-1] == "assistant"
        tokens = full_tokens(request.image)
        assert episode.visual_tokens == (tokens * 5 // 4 if request.needs_high_res else tokens // 4)


def test_server_errors_surface_as_remote_engine_errors(server, engine, requests_):
    with pytest.raises(RemoteEngineError, match="401.*invalid API key"):
        RemoteEngine(server.url, model="tiny-remote", api_key="wrong").run(requests_[:1])
    with pytest.raises(RemoteEngineError, match="404"):
        RemoteEngine(server.url, model="other", api_key=KEY).run(requests_[:1])
    with pytest.raises(RemoteEngineError):
        RemoteEngine("http://127.0.0.1:9", model="x", timeout=5).run(requests_[:1])
    with pytest.raises(ValueError, match="unknown mode"):
        RemoteEngine(server.url, model="tiny-remote").run(requests_[:1], "nope")


def _raw_body(engine, request, **extra) -> dict:
    """The first VisionThink turn as a client running the tool loop itself would send it."""
    views = make_views(load_image(request.image), engine.processor.grid)
    messages = RemoteEngine("http://127.0.0.1:9", model="m").openai_messages(
        protocol.first_turn(request.question, views.low))
    return {"messages": messages, "tools": [RESIZE.schema], **extra}


def test_raw_mode_returns_openai_tool_calls(server, engine, requests_):
    episodes = engine.run(requests_, "visionthink")
    resizing = next(r for r, e in zip(requests_, episodes, strict=True) if e.resized)
    reply = post(server, _raw_body(engine, resizing))
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "resize_image"
    assert json.loads(call["function"]["arguments"]) == {"action": "resize"}
    assert choice["message"]["content"].startswith("<think>")
    assert reply["usage"]["visual_tokens"] == full_tokens(resizing.image) // 4 and "visionthink" not in reply
    # The turn rebuilt from the structured reply is the one the model wrote.
    first = next(e for e in episodes if e.resized)
    assert reply_text(reply) == protocol.assistant_text(first.messages[2])
    # tool_choice none keeps the call out.
    reply = post(server, _raw_body(engine, resizing, tool_choice="none"))
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in reply["choices"][0]["message"]
    assert "<tool_call>" not in reply["choices"][0]["message"]["content"]


def test_raw_mode_streams_tool_calls(server, engine, requests_):
    episodes = engine.run(requests_, "visionthink")
    resizing = next(r for r, e in zip(requests_, episodes, strict=True) if e.resized)
    plain = post(server, _raw_body(engine, resizing))
    _, stream, _ = call(server.url, "POST", CHAT, _raw_body(engine, resizing, stream=True), key=KEY)
    events = [line[6:] for line in stream.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == plain["choices"][0]["message"]["content"]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["resize_image"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_split_tool_calls_keeps_malformed_text_as_content():
    text = resize_text("look closer")
    content, calls = split_tool_calls(text)
    assert content == "<think>look closer</think>\n" and calls[0]["function"]["name"] == "resize_image"
    assert split_tool_calls("<think>x</think>\n<tool_call>\nnot json\n</tool_call>") == (
        "<think>x</think>\n<tool_call>\nnot json\n</tool_call>", [])
    assert split_tool_calls("<answer>4</answer>") == ("<answer>4</answer>", [])
    assert split_tool_calls(text.replace("<think>look closer</think>\n", ""))[0] is None


def test_images_travel_as_png_data_urls(engine, synth_items):
    remote = RemoteEngine("http://127.0.0.1:9", model="m")
    image = synth_items[0].image
    messages = remote.openai_messages(protocol.first_turn("q?", image) + [
        protocol.assistant_turn(resize_text("t")), protocol.tool_turn(RESIZE, image)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    url = messages[1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.tobytes() == image.tobytes()
    assert messages[3]["content"][0]["image_url"]["url"] == url  # encoded once, reused


def test_vllm_engine_explains_a_missing_vllm():
    pytest.importorskip("visionthink.engines.vllm_engine")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    from visionthink.engines.vllm_engine import VLLMEngine

    with pytest.raises(VisionThinkError, match="pip install 'visionthink\\[vllm\\]'"):
        VLLMEngine.from_pretrained("/nonexistent")


# ---------------------------------------------------------------- against a scripted server on loopback


@contextmanager
def scripted_server(replies: list):
    """An OpenAI-compatible endpoint on loopback that answers from a script of (status, body), the last one
    repeated; yields the server: `url` is its /v1 base, `bodies` the requests it was sent."""
    replies = list(replies)

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.reply(*(replies.pop(0) if len(replies) > 1 else replies[0]))

    with http_server(Handler) as server:
        server.bodies, server.url = [], server.url + "/v1"
        yield server


def completion(content: str, prompt_tokens: int, completion_tokens: int = 5, **message) -> tuple[int, dict]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": content, **message},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


def first_prompt_tokens(engine, request) -> int:
    remote = RemoteEngine("http://127.0.0.1:9", model="m", processor=engine.processor)
    views = make_views(load_image(request.image, grid=engine.grid), engine.grid)
    return remote.local_prompt_tokens(protocol.first_turn(request.question, views.low))


def test_a_server_that_renders_otherwise_fails_loudly(engine, requests_):
    """A server that drops the image (a tokenizer-only processor) reports fewer prompt tokens: the run stops."""
    local = first_prompt_tokens(engine, requests_[0])
    with scripted_server([completion("<think>t</think>\n<answer>red</answer>", local - 6)]) as server:
        remote = RemoteEngine(server.url, model="m", processor=engine.processor)
        with pytest.raises(RemoteEngineError, match=f"as {local - 6} prompt tokens, the local template as {local}"):
            remote.run(requests_[:1], "low")


def test_transient_failures_are_retried_and_client_errors_are_not(engine, requests_):
    local = first_prompt_tokens(engine, requests_[0])
    busy = (503, {"error": {"message": "busy"}})
    with scripted_server([busy, busy, completion("<answer>red</answer>", local)]) as server:
        remote = RemoteEngine(server.url, model="m", processor=engine.processor)
        remote._call = retry_fast(remote)
        episode = remote.run(requests_[:1], "low")[0]
        assert episode.answer == "red" and len(server.bodies) == 3
    with scripted_server([(400, {"error": {"message": "bad request"}}), completion("<answer>red</answer>", local)]) \
            as server:
        remote = RemoteEngine(server.url, model="m", processor=engine.processor)
        with pytest.raises(RemoteEngineError, match="HTTP 400: bad request"):
            remote.run(requests_[:1], "low")
        assert len(server.bodies) == 1


def retry_fast(remote: RemoteEngine):
    """`remote._call` with the same retry rule and no waiting."""
    from tenacity import retry, retry_if_exception, stop_after_attempt

    return retry(retry=retry_if_exception(lambda e: getattr(e, "transient", False)),
                 stop=stop_after_attempt(remote.attempts), reraise=True)(remote._call_once)


def test_split_replies_are_joined_back_and_bans_are_sent(engine, requests_):
    """A server with reasoning and tool-call parsers (transformers serve, vLLM with parsers) splits the turn; the
    engine rebuilds the text the model wrote, and bans the call and the image tokens through logit_bias."""
    local = first_prompt_tokens(engine, requests_[0])
    call = {"id": "c1", "type": "function", "function": {"name": "resize_image", "arguments": '{"action": "resize"}'}}
    with scripted_server([completion("", local, reasoning_content="Read the label.", tool_calls=[call]),
                          completion("<answer>dots</answer>", 0, reasoning_content="Now it is clear.")]) as server:
        episode = RemoteEngine(server.url, model="m", processor=engine.processor).run(requests_[:1], "visionthink")[0]
    texts = [protocol.assistant_text(m) for m in episode.messages if m["role"] == "assistant"]
    assert texts == [resize_text("Read the label."), "<think>Now it is clear.</think>\n<answer>dots</answer>"]
    assert episode.resized and episode.answer == "dots" and episode.well_formed
    tool_call = str(engine.processor.tokenizer.convert_tokens_to_ids("<tool_call>"))
    image_pad = str(engine.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    first, second = server.bodies
    assert first["tool_choice"] == "auto" and tool_call not in first["logit_bias"]
    assert first["logit_bias"][image_pad] == -100
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["content"] == texts[0]


def test_low_mode_bans_the_call_even_where_tool_choice_is_ignored(engine, requests_):
    """Also: a call's own sampling is posted, and the engine keeps its greedy default."""
    local = first_prompt_tokens(engine, requests_[0])
    sampling = SamplingConfig(do_sample=True, temperature=0.7, seed=5)
    with scripted_server([completion("<answer>red</answer>", local)]) as server:
        remote = RemoteEngine(server.url, model="m", processor=engine.processor)
        remote.run(requests_[:1], "low")
        remote.run(requests_[:1], "low", sampling=sampling)
    tool_call = str(engine.processor.tokenizer.convert_tokens_to_ids("<tool_call>"))
    assert server.bodies[0]["tool_choice"] == "none" and server.bodies[0]["logit_bias"][tool_call] == -100
    assert [(b["temperature"], b.get("seed")) for b in server.bodies] == [(0, None), (0.7, 5)]
    assert not remote.sampling.do_sample


def test_raw_mode_takes_bans_only(server, engine, requests_):
    episodes = engine.run(requests_, "visionthink")
    resizing = next(r for r, e in zip(requests_, episodes, strict=True) if e.resized)
    tool_call = engine.processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    reply = post(server, _raw_body(engine, resizing, logit_bias={str(tool_call): -100}))
    assert reply["choices"][0]["finish_reason"] == "stop"  # the model wanted the call; the ban kept it out
    assert "<tool_call>" not in reply["choices"][0]["message"]["content"]
    for bias, why in (({str(tool_call): 5}, "only bans"), ({"x": -100}, "not a token id")):
        status, refused, _ = call(server.url, "POST", CHAT, _raw_body(engine, resizing, logit_bias=bias), key=KEY)
        assert status == 400 and why in refused["error"]["message"]


def test_serve_on_the_remote_engine_runs_episodes_through_another_server(server, engine, requests_, shipped_model_dir):
    """`visionthink serve --engine remote` in front of another server: the same episodes, two hops. `model` names the
    folder the other server serves (without it, the default model's: another protocol)."""
    from visionthink.engines.factory import EngineOptions, build_engine

    remote = build_engine(EngineOptions(engine="remote", base_url=server.url + "/v1", api_key=KEY, concurrency=4,
                                        model=str(shipped_model_dir)))
    want = engine.run(requests_[:4], "visionthink")
    with serving(remote, ServeConfig(model_name="front"), context=4096) as running:
        for request, episode in zip(requests_[:4], want, strict=True):
            body = {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(load_image(request.image))}},
                {"type": "text", "text": request.question}]}]}
            status, reply, _ = call(running.url, "POST", CHAT, body, key=None)
            assert status == 200 and reply["choices"][0]["message"]["content"] == episode.answer, reply
            assert reply["usage"]["visual_tokens"] == episode.visual_tokens
        status, reply, _ = call(running.url, "POST", CHAT, _raw_body(engine, requests_[0]), key=None)
        assert status == 400 and "model's own server" in reply["error"]["message"]


def test_a_server_that_drops_part_of_the_turn_fails_loudly(engine, requests_):
    """transformers 5.17's server drops the `<think>` text it parses out: the reply is shorter than what was written."""
    local = first_prompt_tokens(engine, requests_[0])
    with scripted_server([completion("<answer>red</answer>", local, completion_tokens=15)]) as server:
        remote = RemoteEngine(server.url, model="m", processor=engine.processor)
        with pytest.raises(RemoteEngineError, match="wrote 15 tokens but its reply holds only"):
            remote.run(requests_[:1], "low")
