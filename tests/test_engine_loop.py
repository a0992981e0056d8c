"""The one two-turn loop (`engines.base`): its protocol rules, and every engine's path through it."""

from __future__ import annotations

import math
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
    """A stand-in for `vllm.LLM` that replays a real model's turns, keyed by the exact rendered prompt. Asked for
    log-probabilities (`logprobs=0`), it gives every token of a reply the probability `confidence[prompt]` (1 where
    none is given), shaped as vLLM's: one `{token_id: Logprob}` per written token."""

    def __init__(self, replies: dict[str, str], tokenizer, confidence: dict[str, float] | None = None):
        self.replies = replies
        self.tokenizer = tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.confidence = confidence or {}
        self.forbidden: list[bool] = []
        self.asked_logprobs: list[tuple[int, int | None]] = []
        """(images in the prompt, `logprobs` asked) per prompt."""

    def generate(self, prompts, params, use_tqdm=False):
        outputs = []
        for prompt, param in zip(prompts, params, strict=True):
            text = prompt["prompt"]
            assert len(prompt["multi_modal_data"]["image"]) == text.count("<|vision_start|>")
            self.forbidden.append(self.tool_call_id in param.logit_bias)
            self.asked_logprobs.append((len(prompt["multi_modal_data"]["image"]), getattr(param, "logprobs", None)))
            reply = self.replies[text] + "<|im_end|>"
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            logprob = math.log(self.confidence.get(text, 1.0))
            steps = [{i: types.SimpleNamespace(logprob=logprob)} for i in ids] \
                if getattr(param, "logprobs", None) is not None else None
            completion = types.SimpleNamespace(text=reply, token_ids=ids, logprobs=steps)
            outputs.append(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[0] * 50))
        return outputs


def _replies(processor, episodes) -> dict[str, str]:
    """Each assistant turn of `episodes`, keyed by the prompt it answered."""
    replies = {}
    for episode in episodes:
        for index, message in enumerate(episode.messages):
            if message["role"] == "assistant":
                prompt = render_text(processor, episode.messages[:index], add_generation_prompt=True)
                replies[prompt] = protocol.assistant_text(message)
    return replies


def _stand_in_vllm(monkeypatch) -> None:
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)


@pytest.mark.parametrize("mode", ["full", "low", "visionthink", "oracle"])
def test_vllm_path_gives_the_transformers_episodes(shipped_model, monkeypatch, mode):
    """Same model turns, two engines' paths: the vLLM backend's episodes equal the transformers engine's."""
    model, processor = shipped_model
    items = synth.split_items("test", 12, seed=5)
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    local = TransformersEngine(model, processor, batch_size=5).run(requests, mode)
    _stand_in_vllm(monkeypatch)
    llm = ReplayLLM(_replies(processor, local), processor.tokenizer)
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
    assert {asked for images, asked in llm.asked_logprobs if images == 1} == {0}  # first turns only
    assert {asked for images, asked in llm.asked_logprobs if images > 1} <= {None}
    assert [e.answer_confidence for e in remote] == [1.0 if mine.turns[0].kind == "answer" else None for mine in local]


def test_vllm_path_escalates_the_answers_the_transformers_engine_escalates(shipped_model, monkeypatch):
    """The vLLM engine reads the answer's confidence from vLLM's log-probabilities: replaying a real model's first
    answers with their confidences, it withdraws exactly the answers the transformers engine withdraws."""
    model, processor = shipped_model
    items = synth.split_items("test", 16, seed=7)
    local = TransformersEngine(model, processor, batch_size=8)
    plain = local.run([Request(item.image, item.question) for item in items], "visionthink")
    confidences = sorted(e.answer_confidence for e in plain if e.answer_confidence is not None)
    assert len(confidences) >= 4
    below = (confidences[len(confidences) // 2 - 1] + confidences[len(confidences) // 2]) / 2
    requests = [Request(item.image, item.question, escalate_below=below) for item in items]
    escalated = local.run(requests, "visionthink")
    assert 0 < sum(e.escalated for e in escalated) < len(items)
    first = {render_text(processor, e.messages[:2], add_generation_prompt=True): e for e in plain}
    confidence = {prompt: e.answer_confidence for prompt, e in first.items() if e.answer_confidence is not None}
    replies = _replies(processor, escalated) | _replies(processor, plain)  # first turns as the model wrote them
    _stand_in_vllm(monkeypatch)
    remote = VLLMEngine(ReplayLLM(replies, processor.tokenizer, confidence), processor, batch_size=8).run(
        requests, "visionthink")
    for mine, theirs in zip(escalated, remote, strict=True):
        assert (theirs.escalated, theirs.answer, theirs.resized, theirs.visual_tokens) == (
            mine.escalated, mine.answer, mine.resized, mine.visual_tokens)
        assert [protocol.assistant_text(m) for m in theirs.messages if m["role"] == "assistant"] == [
            protocol.assistant_text(m) for m in mine.messages if m["role"] == "assistant"]
        assert theirs.answer_confidence == pytest.approx(mine.answer_confidence, abs=1e-6) \
            if mine.answer_confidence is not None else theirs.answer_confidence is None


def test_a_vllm_reply_without_log_probabilities_fails_loudly(shipped_model, monkeypatch):
    from visionthink.errors import VisionThinkError

    model, processor = shipped_model
    items = synth.split_items("test", 4, seed=7)
    requests = [Request(item.image, item.question) for item in items]
    local = TransformersEngine(model, processor).run(requests, "full")

    class Forgetful(ReplayLLM):
        def generate(self, prompts, params, use_tqdm=False):
            outputs = super().generate(prompts, params, use_tqdm)
            for output in outputs:
                output.outputs[0].logprobs = None
            return outputs

    _stand_in_vllm(monkeypatch)
    with pytest.raises(VisionThinkError, match="log-probability"):
        VLLMEngine(Forgetful(_replies(processor, local), processor.tokenizer), processor).run(requests, "full")


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
