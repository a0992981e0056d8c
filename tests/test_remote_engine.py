"""The remote engine against this project's server in raw mode, over loopback, and raw mode itself."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import pytest
from conftest import full_tokens  # tests/ is on sys.path
from PIL import Image

from visionthink import protocol
from visionthink.engines.remote import RemoteEngine, RemoteEngineError, reply_text
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.images import load_image, make_views
from visionthink.serve.app import BackgroundServer, ServeConfig, create_app, split_tool_calls

KEY = "remote-key"


@pytest.fixture(scope="module")
def engine(shipped_model):
    return TransformersEngine(*shipped_model)


@pytest.fixture(scope="module")
def server(shipped_model):
    config = ServeConfig(model_name="tiny-remote", api_key=KEY, max_batch=8)
    with BackgroundServer(create_app(TransformersEngine(*shipped_model), config)) as running:
        yield running


@pytest.fixture(scope="module")
def requests_(synth_items):
    return [Request(item.image, item.question, item.needs_high_res) for item in synth_items]


def post(server, body: dict) -> dict:
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("mode", ["visionthink", "oracle", "low", "full"])
def test_remote_episodes_equal_local_ones(server, engine, requests_, mode):
    remote = RemoteEngine(server.url, api_key=KEY, grid=engine.processor.grid, max_workers=6)
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
    return {"messages": messages, "tools": [protocol.RESIZE_TOOL], **extra}


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
    request = urllib.request.Request(server.url + "/v1/chat/completions",
                                     data=json.dumps(_raw_body(engine, resizing, stream=True)).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [line[6:] for line in response.read().decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == plain["choices"][0]["message"]["content"]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["resize_image"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_split_tool_calls_keeps_malformed_text_as_content():
    text = protocol.resize_text("look closer")
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
        protocol.assistant_turn(protocol.resize_text("t")), protocol.tool_turn(image)])
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
