"""P(tool) at the first-turn decision and the tool threshold (`engines.tool_decision`), on the shipped resize model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BlindBackend  # tests/ is on sys.path

from visionthink.data import synth
from visionthink.engines.base import Request, run_episodes
from visionthink.engines.tool_decision import Decisions, PathTokens
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import VisionThinkError


@pytest.fixture(scope="module")
def engine(shipped_model_dir) -> TransformersEngine:
    return TransformersEngine.from_pretrained(shipped_model_dir, batch_size=16)


@pytest.fixture(scope="module")
def items():
    return synth.split_items("test", 40, seed=0, wordings="heldout")


def _requests(items, threshold=None):
    return [Request(i.image, i.question, i.needs_high_res, tool_threshold=threshold) for i in items]


def test_without_a_threshold_episodes_are_the_greedy_ones(engine, items, monkeypatch):
    recorded = engine.run(_requests(items))
    monkeypatch.setattr(engine, "decides_by_threshold", False)  # the loop then asks for no decision at all
    plain = engine.run(_requests(items))
    assert [e.fed_token_ids for e in recorded] == [e.fed_token_ids for e in plain]
    assert [e.answer for e in recorded] == [e.answer for e in plain]
    assert all(e.p_tool is not None for e in recorded) and all(e.p_tool is None for e in plain)
    # the greedy choice is the likelier path: P(tool) >= 0.5 exactly where the model called the tool
    assert [e.resized for e in recorded] == [e.p_tool >= 0.5 for e in recorded]
    assert any(e.resized for e in recorded) and not all(e.resized for e in recorded)


def test_p_tool_separates_items_that_need_high_resolution(engine, items):
    episodes = engine.run(_requests(items))
    needed = [e.p_tool for e, i in zip(episodes, items, strict=True) if i.needs_high_res]
    not_needed = [e.p_tool for e, i in zip(episodes, items, strict=True) if not i.needs_high_res]
    assert needed and not_needed
    assert min(needed) > max(not_needed)


def test_a_threshold_chooses_the_path_and_the_model_writes_the_rest(engine, items):
    greedy = engine.run(_requests(items))
    always = engine.run(_requests(items, 0.0))
    never = engine.run(_requests(items, math.inf))
    assert all(e.resized and e.well_formed for e in always)
    assert not any(e.resized for e in never) and all(e.well_formed for e in never)
    for path in (always, never):  # the decision is read before the threshold acts: the same P(tool)
        assert [e.p_tool for e in path] == pytest.approx([e.p_tool for e in greedy], abs=1e-4)
    middle = sorted(e.p_tool for e in greedy)[len(greedy) // 2]
    steered = engine.run(_requests(items, middle))
    assert [e.resized for e in steered] == [e.p_tool >= middle for e in steered]
    assert all(e.tool_threshold == middle for e in steered)
    assert {e.summary()["tool_threshold"] for e in never} == {"inf"}


def test_full_and_low_modes_record_no_decision(engine, items):
    for mode in ("full", "low"):
        episodes = engine.run(_requests(items[:4], 0.0), mode)
        assert all(e.p_tool is None and e.tool_threshold is None and not e.resized for e in episodes)


def test_a_threshold_outside_0_1_is_refused(engine, items):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        engine.run(_requests(items[:1], 1.5))


def test_a_backend_that_cannot_steer_refuses_a_threshold(items):
    with pytest.raises(VisionThinkError, match="needs the transformers engine"):
        run_episodes(BlindBackend(), _requests(items[:2], 0.5), "visionthink")


def test_path_tokens_of_the_real_qwen_vocabulary():
    from visionthink.models.vocab import build_qwen25_tokenizer

    tokenizer = build_qwen25_tokenizer()
    paths = PathTokens.of(tokenizer)
    assert paths.tool_ids == (tokenizer.convert_tokens_to_ids("<tool_call>"),)
    for text in ("</think>\n<answer>", "</think> <answer>", "</think>\n\n<answer>"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        opener = next(i for i, t in enumerate(ids) if t in paths.answer_ids)
        assert "</think>" in tokenizer.decode(ids[:opener])  # the opener comes after the reasoning closes
    assert not set(tokenizer.encode("</think>", add_special_tokens=False)) & set(paths.answer_ids)


class _Text:
    """Ids as text: id 0 is '</think>', 1 '<answer>', 2 '<tool_call>', others 'x'."""

    @staticmethod
    def decode(ids):
        return "".join({0: "</think>", 1: "<answer>", 2: "<tool_call>"}.get(i, "x") for i in ids)


def _logits(tool: float, answer: float, other: float = 0.0) -> torch.Tensor:
    line = torch.full((5,), other)
    line[1], line[2] = answer, tool
    return line


def test_decisions_read_p_tool_only_after_the_reasoning_closes():
    paths = PathTokens(tool_ids=(2,), answer_ids=(1,))
    decisions = Decisions(paths, [None], [True], _Text.decode)
    assert decisions.review(0, _logits(3.0, 1.0), 1, written=[3, 3]) == 1  # still thinking: nothing read
    assert decisions.p_tool == [None]
    assert decisions.review(0, _logits(3.0, 1.0, other=9.0), 4, written=[3, 0]) == 4  # not an opener
    assert decisions.review(0, _logits(3.0, 1.0, other=9.0), 2, written=[3, 0]) == 2
    assert decisions.p_tool[0] == pytest.approx(1 / (1 + math.exp(-2.0)))  # normalised over the two openers only
    assert not decisions.pending(0)
    assert decisions.review(0, _logits(-5.0, 5.0), 2, written=[3, 0, 2]) == 2  # one decision per turn


@pytest.mark.parametrize(("threshold", "chosen", "expected"), [
    (0.5, 1, 2), (0.9, 2, 1), (None, 1, 1), (0.0, 1, 2), (math.inf, 2, 1),
])
def test_decisions_steer_by_the_threshold(threshold, chosen, expected):
    decisions = Decisions(PathTokens((2,), (1,)), [threshold], [True], _Text.decode)
    assert decisions.review(0, _logits(2.0, 1.0), chosen, written=[0]) == expected  # P(tool) = 0.73


def test_a_row_whose_call_is_forbidden_is_not_watched():
    decisions = Decisions(PathTokens((2,), (1,)), [0.0], [False], _Text.decode)
    assert decisions.review(0, _logits(2.0, 1.0), 1, written=[0]) == 1
    assert decisions.p_tool == [None]
