"""The answer's confidence and the escalation of unsure answers (`engines.confidence`), on the shipped ladder model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LADDER_DIR as LADDER  # tests/ is on sys.path
from conftest import BlindBackend

from visionthink.data import synth
from visionthink.engines.base import Request, run_episodes
from visionthink.engines.confidence import answer_confidence
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.tokens import encode_batch


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return TransformersEngine.from_pretrained(LADDER, batch_size=16)


@pytest.fixture(scope="module")
def items():
    return synth.ladder_items("test", 48, seed=0, wordings="heldout")


def _requests(items, below=None):
    return [Request(i.image, i.question, i.needs_high_res, escalate_below=below) for i in items]


def test_confidence_is_the_least_probability_inside_the_answer():
    pieces = ["<think>", "Count", ".", "</think>", "\n", "<answer>", "1", "2", "</answer>", "<|im_end|>"]
    probs = [0.1, 0.2, 0.3, 0.05, 0.9, 0.8, 0.7, 0.6, 0.01, 0.02]
    assert answer_confidence(pieces, probs) == 0.6  # the think's and the markers' tokens do not count
    assert answer_confidence(pieces[:8], probs[:8]) == 0.6  # a turn cut before </answer>: to the end
    # a BPE token that carries the marker's end and the answer's start counts; a blank one does not
    assert answer_confidence(["<ans", "wer>red", " ", "</answer>"], [0.9, 0.4, 0.01, 0.3]) == 0.4
    assert answer_confidence(["<think>", "x", "</think>"], [0.5, 0.5, 0.5]) is None  # no answer
    assert answer_confidence(["<answer>", " ", "</answer>"], [0.5, 0.1, 0.5]) is None  # an empty one
    with pytest.raises(ValueError, match="token texts"):
        answer_confidence(["<answer>"], [])


def test_recorded_probabilities_are_the_models_own(engine, items):
    """What the decoder records for each written token (drafts, repeats and memory guesses included) equals the
    probability one forward pass over the whole turn gives it."""
    episodes = engine.run(_requests(items[:16]), "zoom")
    answered = [(i, e) for i, e in zip(items[:16], episodes, strict=True) if e.turns[0].kind == "answer"]
    assert len(answered) >= 4 and all(e.answer_confidence is not None for _, e in answered)
    model, processor = engine.model, engine.processor
    tokenizer = processor.tokenizer
    for _, episode in answered[:6]:
        messages = episode.messages[:3]  # system, user, the first assistant turn
        batch = encode_batch(processor, [messages], False, protocol=engine.protocol)[0]
        ids = batch["input_ids"][0].tolist()
        written = tokenizer.encode(episode.summary()["turns"][0], add_special_tokens=False)
        start = max(i for i in range(len(ids) - len(written) + 1) if ids[i:i + len(written)] == written)
        with torch.no_grad():
            logits = model(**batch).logits[0].float()
        probs = [float(logits[i - 1].softmax(-1)[ids[i]]) for i in range(start, start + len(written))]
        pieces = tokenizer.batch_decode([[i] for i in written], skip_special_tokens=False)
        assert episode.answer_confidence == pytest.approx(answer_confidence(pieces, probs), abs=2e-3)


def test_without_escalation_episodes_are_unchanged(engine, items, monkeypatch):
    recorded = engine.run(_requests(items), "zoom")
    zero = engine.run(_requests(items, 0.0), "zoom")  # nothing is below 0
    monkeypatch.setattr(engine, "records_confidence", False)  # the loop then asks for no confidence at all
    plain = engine.run(_requests(items), "zoom")
    for episodes in (zero, plain):
        assert [e.fed_token_ids for e in episodes] == [e.fed_token_ids for e in recorded]
        assert [e.answer for e in episodes] == [e.answer for e in recorded]
    assert not any(e.escalated for e in zero)
    assert all(e.answer_confidence is None for e in plain)
    direct = [e for e in recorded if e.turns[0].kind == "answer"]
    assert direct and all(0 < e.answer_confidence <= 1 for e in direct)
    assert all(e.answer_confidence is None for e in recorded if e.turns[0].kind != "answer")


def test_an_unsure_answer_is_withdrawn_for_a_resize(engine, items):
    greedy = engine.run(_requests(items), "zoom")
    direct = sorted(e.answer_confidence for e in greedy if e.turns[0].kind == "answer")
    below = direct[len(direct) // 2]  # about half the direct answers are under it
    escalated = engine.run(_requests(items, below), "zoom")
    for plain, episode in zip(greedy, escalated, strict=True):
        unsure = plain.turns[0].kind == "answer" and plain.answer_confidence < below
        assert episode.escalated == unsure
        assert episode.answer_confidence == pytest.approx(plain.answer_confidence, abs=1e-4) \
            if plain.answer_confidence is not None else episode.answer_confidence is None
        if unsure:  # the think kept, the answer replaced by the call; both views in context; answered again
            assert episode.turns[0].call.name == "resize_image" and episode.turns[0].think == plain.turns[0].think
            assert episode.resized and episode.visual_tokens_per_turn == [
                plain.visual_tokens, episode.full_res_visual_tokens]
            assert episode.turns[-1].kind == "answer" and episode.escalate_below == below
        else:
            assert episode.fed_token_ids == plain.fed_token_ids
    assert 0 < sum(e.escalated for e in escalated) < len(escalated)


def test_oracle_and_single_view_modes_never_escalate(engine, items):
    for mode in ("low", "full", "oracle-ladder"):
        episodes = engine.run([Request(i.image, i.question, i.needs_high_res, right_action=i.right_action,
                                       box=i.label_box, escalate_below=1.0) for i in items[:8]], mode)
        assert not any(e.escalated for e in episodes) and all(e.escalate_below is None for e in episodes)


def test_a_threshold_outside_0_1_is_refused(engine, items):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        engine.run(_requests(items[:1], 1.5), "zoom")


def test_a_backend_that_cannot_read_probabilities_refuses_escalation(items):
    with pytest.raises(VisionThinkError, match="needs an engine that reads the answer.s token probabilities"):
        run_episodes(BlindBackend(), _requests(items[:2], 0.5), "visionthink")


def test_eval_runs_each_threshold_under_its_own_label(tmp_path):
    from visionthink.eval.runner import EvalConfig, run_eval

    config = EvalConfig(model=str(LADDER), benches=["ladder-heldout"], modes=["low", "zoom"], out=tmp_path,
                        limit=48, escalate_below=[0.0, 1.0], progress=False)
    summary = run_eval(config, log=lambda _: None).summary["ladder-heldout"]
    assert list(summary) == ["low", "zoom", "zoom+escalate@0", "zoom+escalate@1"]  # low does not decide
    assert summary["zoom+escalate@0"]["score"] == summary["zoom"]["score"]
    assert "escalated" not in summary["zoom+escalate@0"]
    everything = summary["zoom+escalate@1"]  # every direct answer short of certain is withdrawn
    assert everything["escalated"] > 0.5 and everything["per_family"]["coarse"]["escalated"] > 0.9
    assert everything["visual_tokens"] > summary["zoom"]["visual_tokens"]
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in records if r["escalated"]} == {"zoom+escalate@1"}


def test_eval_refuses_a_bad_threshold_before_any_work(tmp_path):
    from visionthink.eval.runner import EvalConfig, run_eval

    config = EvalConfig(model=str(LADDER), benches=["ladder"], modes=["zoom"], out=tmp_path / "out", limit=4,
                        escalate_below=[2.0], progress=False)
    with pytest.raises(VisionThinkError, match="--escalate-below"):
        run_eval(config)
    assert not (tmp_path / "out").exists()


def test_the_budget_escalates_the_least_confident_answers_first():
    from visionthink.eval.escalation import choose_escalation

    def record(confidence, tokens=4, full=16):
        return {"visual_tokens": tokens, "full_res_visual_tokens": full, "answer_confidence": confidence}

    records = [record(0.9), record(0.3), record(0.5), record(0.5), record(None, tokens=8), record(0.7)]
    full = 6 * 16
    base = (5 * 4 + 8) / full
    assert choose_escalation(records, base) == choose_escalation(records, base + 0.01)  # room for none
    none = choose_escalation(records, base)
    assert (none.threshold, none.escalated) == (0.0, 0)
    one = choose_escalation(records, base + 16 / full)  # room for one: the 0.3 answer, halfway to the next
    assert (one.threshold, one.escalated) == (0.4, 1) and one.token_fraction == pytest.approx(base + 16 / full)
    # room for two: the tied 0.5 answers go together or not at all, so still one
    assert choose_escalation(records, base + 2 * 16 / full).escalated == 1
    three = choose_escalation(records, base + 3 * 16 / full)
    assert (three.threshold, three.escalated) == (0.6, 3)
    every = choose_escalation(records, 10.0)  # the tool call (None) is never escalated
    assert every.escalated == 5 and every.threshold == pytest.approx(0.95)
    with pytest.raises(ValueError, match="no records"):
        choose_escalation([], 0.5)


def test_eval_chooses_the_threshold_on_calibration_items_and_runs_the_rest(tmp_path):
    from visionthink.eval.runner import EvalConfig, run_eval, split_calibration

    config = EvalConfig(model=str(LADDER), benches=["ladder"], modes=["zoom"], out=tmp_path, limit=60,
                        escalate_budget=0.6, progress=False)
    result = run_eval(config, log=lambda _: None)
    labels = list(result.summary["ladder"])
    assert labels[0] == "zoom" and len(labels) == 2 and labels[1].startswith("zoom+escalate@")
    below = float(labels[1].split("@")[1])
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    plain = {r["uid"]: r for r in records if r["mode"] == "zoom"}
    escalated = {r["uid"]: r for r in records if r["mode"] == labels[1]}
    samples = synth.ladder_items("test", 60, seed=0, wordings="train")
    calibration, test = split_calibration(samples, 0.4)
    assert set(escalated) == {s.uid for s in test}  # only the rest runs with the chosen threshold
    spent = sum(plain[s.uid]["visual_tokens"] + plain[s.uid]["full_res_visual_tokens"] * (
        plain[s.uid]["answer_confidence"] is not None and plain[s.uid]["answer_confidence"] < below)
        for s in calibration)
    assert 0 < below and spent <= 0.6 * sum(plain[s.uid]["full_res_visual_tokens"] for s in calibration)
    for uid, record in escalated.items():  # exactly the answers under it were withdrawn
        confidence = plain[uid]["answer_confidence"]
        assert record["escalated"] == (confidence is not None and confidence < below)
    assert any(r["escalated"] for r in escalated.values())
    assert any("escalation budget 0.6" in note for note in result.notes)


def test_guessed_tokens_get_the_probabilities_decoding_them_one_by_one_gives(engine, items):
    """Tokens fed as a guess (the output memory here) and kept get the probability their own position's logits give:
    the same as decoding token by token, and with a turn's whole text guessed right."""
    from visionthink.engines.kv_decoder import KVDecoder, OutputMemory, SamplingConfig

    profile, grid = engine.protocol, engine.grid
    conversations = []
    for item in items[:8]:
        views = profile.views(item.image, grid)
        conversations.append(profile.first_turn(item.question, views.low))
    sampling = SamplingConfig(max_new_tokens=48)
    memory = OutputMemory()
    runs = []
    for guessing in (False, True, True):  # the second pass with the memory guesses what the first wrote
        decoder = KVDecoder(engine.model, engine.pad_id, engine.stop_ids, prefix=engine.shared_prefix())
        engine.feed(decoder, conversations)
        probs = [[] for _ in conversations]
        passes: list[int] = []
        hook = engine.model.register_forward_hook(lambda *_, counted=passes: counted.append(1))
        try:
            written = decoder.decode(sampling, banned_ids=[engine.never_ids] * len(conversations),
                                     memory=memory if guessing else None, token_probs=probs)
        finally:
            hook.remove()
        runs.append((written, probs, len(passes)))
    (plain, plain_probs, plain_passes), _, (guessed, guessed_probs, guessed_passes) = runs
    assert guessed == plain and guessed_passes < plain_passes / 2  # most of each turn came as a kept guess
    for ours, theirs, ids in zip(guessed_probs, plain_probs, plain, strict=True):
        assert len(ours) == len(theirs) == len(ids)
        assert ours == pytest.approx(theirs, abs=1e-4)
        assert all(0 < p <= 1 for p in ours)
