"""The one two-turn loop (`engines.base`): its protocol rules, and every engine's path through it."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import ScriptedBackend, full_tokens  # tests/ is on sys.path
from PIL import Image

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.base import Request, run_episodes
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.engines.vllm_engine import VLLMEngine
from visionthink.profiles import VISIONTHINK
from visionthink.tokens import render_text

RESIZE = VISIONTHINK.call_text("small", "resize_image", {"action": "resize"})
ANSWER = protocol.answer_text("seen", "dots")
BAD_CALL = '<think>x</think>\n<tool_call>\n{"name": "crop"}\n</tool_call>'


def image(width=112, height=112):
    return Image.new("RGB", (width, height), "white")


def test_loop_applies_the_protocol_in_every_mode():
    script = {"answers": [ANSWER], "resizes": [RESIZE, ANSWER], "bad call": [BAD_CALL, ANSWER],
              "resizes twice": [RESIZE, RESIZE], "rambles": ["no tags"]}
    requests = [Request(image(168, 112), q, needs_high_res=q != "answers") for q in script]
    backend = ScriptedBackend(script)
    episodes = run_episodes(backend, requests, "visionthink")
    by_question = dict(zip(script, episodes, strict=True))
    assert by_question["answers"].answer == "dots" and not by_question["answers"].resized
    resized = by_question["resizes"]
    assert resized.resized and resized.answer == "dots" and resized.well_formed
    assert [m["role"] for m in resized.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert resized.visual_tokens_per_turn == [full_tokens(image(84, 56)), full_tokens(image(168, 112))]
    assert resized.full_res_visual_tokens == full_tokens(image(168, 112))
    bad = by_question["bad call"]
    assert bad.messages[3]["content"][0]["text"].startswith("Error: unknown tool") and not bad.resized
    assert bad.answer == "dots" and not bad.well_formed
    twice = by_question["resizes twice"]
    assert twice.answer is None and twice.resized and "instead of answering" in twice.error
    assert by_question["rambles"].error.startswith("final turn malformed")
    # prompt tokens: the conversation's last length (100 + turn index here) less the 7 written per turn
    assert by_question["answers"].prompt_tokens == 93 and resized.prompt_tokens == 101 - 14
    assert not any(forbid for _, _, forbid in backend.calls)


def test_loop_modes_forbid_the_call_and_the_oracle_forces_it():
    script = {"needs": [ANSWER, ANSWER], "fine": [ANSWER]}
    requests = [Request(image(), "needs", True), Request(image(), "fine", False)]
    for mode in ("full", "low"):
        backend = ScriptedBackend(script)
        episodes = run_episodes(backend, requests, mode)
        assert all(forbid for _, _, forbid in backend.calls) and len(backend.calls) == 2
        first = full_tokens(image()) if mode == "full" else full_tokens(image(56, 56))
        assert [e.visual_tokens for e in episodes] == [first, first]
    backend = ScriptedBackend(script)
    needs, fine = run_episodes(backend, requests, "oracle")
    assert needs.resized and needs.turns[0].think == "seen" and needs.answer == "dots"
    assert not fine.resized
    assert sorted(backend.calls) == [("fine", 0, True), ("needs", 0, False), ("needs", 1, False)]
    with pytest.raises(ValueError, match="needs_high_res"):
        run_episodes(ScriptedBackend(script), [Request(image(), "fine")], "oracle")
    with pytest.raises(ValueError, match="unknown mode"):
        run_episodes(ScriptedBackend(script), requests, "zoom-ish")


def test_a_call_in_the_last_turn_gets_no_image():
    """`resized` means the high-res image was delivered, whichever engine or trainer built the episode."""
    script = {"q": [BAD_CALL, RESIZE]}
    episode, = run_episodes(ScriptedBackend(script), [Request(image(), "q", True)], "visionthink")
    assert not episode.resized and episode.visual_tokens == full_tokens(image(56, 56))


class ReplayLLM:
    """A stand-in for `vllm.LLM` that replays a real model's turns, keyed by the exact rendered prompt."""

    def __init__(self, replies: dict[str, str], tool_call_id: int):
        self.replies = replies
        self.tool_call_id = tool_call_id
        self.forbidden: list[bool] = []

    def generate(self, prompts, params, use_tqdm=False):
        outputs = []
        for prompt, param in zip(prompts, params, strict=True):
            text = prompt["prompt"]
            assert len(prompt["multi_modal_data"]["image"]) == text.count("<|vision_start|>")
            self.forbidden.append(self.tool_call_id in param.logit_bias)
            completion = types.SimpleNamespace(text=self.replies[text] + "<|im_end|>", token_ids=[0] * 5)
            outputs.append(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[0] * 50))
        return outputs


@pytest.mark.parametrize("mode", ["full", "low", "visionthink", "oracle"])
def test_vllm_path_gives_the_transformers_episodes(shipped_model, monkeypatch, mode):
    """Same model turns, two engines' paths: the vLLM backend's episodes equal the transformers engine's."""
    model, processor = shipped_model
    items = synth.split_items("test", 12, seed=5)
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    local = TransformersEngine(model, processor, batch_size=5).run(requests, mode)
    replies = {}
    for episode in local:
        for index, message in enumerate(episode.messages):
            if message["role"] == "assistant":
                prompt = render_text(processor, episode.messages[:index], add_generation_prompt=True)
                replies[prompt] = protocol.assistant_text(message)
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    llm = ReplayLLM(replies, processor.tokenizer.convert_tokens_to_ids("<tool_call>"))
    remote = VLLMEngine(llm, processor, batch_size=4).run(requests, mode)
    assert any(e.resized for e in local) == (mode in ("visionthink", "oracle"))
    for mine, theirs in zip(local, remote, strict=True):
        texts = [[protocol.assistant_text(m) for m in e.messages] for e in (mine, theirs)]
        assert texts[0] == texts[1]
        assert [(e.answer, e.resized, e.turns, e.mode) for e in (mine, theirs)] == [(mine.answer,) + (
            mine.resized, mine.turns, mine.mode)] * 2
        assert mine.visual_tokens_per_turn == theirs.visual_tokens_per_turn
        assert mine.full_res_visual_tokens == theirs.full_res_visual_tokens
    assert all(llm.forbidden) == (mode in ("full", "low"))


def test_grpo_rollouts_and_engines_build_episodes_by_one_rule(shipped_model):
    """`protocol.make_episode` is the builder: an engine's conversation rebuilt gives the same episode."""
    model, processor = shipped_model
    items = [item for item in synth.split_items("test", 20, seed=6) if item.needs_high_res][:3]
    episodes = TransformersEngine(model, processor).run([Request(i.image, i.question) for i in items])
    for episode in episodes:
        rebuilt = protocol.make_episode(episode.messages, episode.turns, lambda im: processor.grid.tokens(*im.size),
                                        episode.full_res_visual_tokens)
        assert (rebuilt.resized, rebuilt.answer, rebuilt.visual_tokens_per_turn) == (
            episode.resized, episode.answer, episode.visual_tokens_per_turn)
