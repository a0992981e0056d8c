"""The lmms-eval adapter: request handling on CPU with the shipped checkpoint (lmms-eval itself is optional)."""

from __future__ import annotations

import json

import pytest

from visionthink import protocol
from visionthink.data.synth import make_item
from visionthink.integrations import lmms_eval_model
from visionthink.integrations.lmms_eval_model import VisionThinkLMM

try:  # the same test the adapter makes: lmms-eval's model API imports
    import lmms_eval.api.model  # noqa: F401

    HAS_LMMS = True
except ImportError:
    HAS_LMMS = False
TASK, SPLIT = "synth_task", "test"


class FakeInstance:
    """What the adapter reads of lmms-eval's `Instance`: `args`."""

    def __init__(self, args: tuple):
        self.args = args


def doc_to_visual(doc):
    return [doc["image"]]


def make_docs(n: int) -> list[dict]:
    items = [make_item(7, index) for index in range(n)]
    return [{"image": i.image, "question": i.question, "answer": i.answer, "family": i.family} for i in items]


def make_requests(docs, order, gen_kwargs=None):
    return [FakeInstance((docs[i]["question"], dict(gen_kwargs or {}), doc_to_visual, i, TASK, SPLIT)) for i in order]


@pytest.fixture(scope="module")
def lmm(shipped_model_dir):
    model = VisionThinkLMM(pretrained=str(shipped_model_dir), mode="visionthink", batch_size=2)
    return model


def test_module_imports_without_lmms_eval_and_picks_the_right_base():
    assert lmms_eval_model.HAS_LMMS_EVAL == HAS_LMMS
    if not HAS_LMMS:
        assert issubclass(VisionThinkLMM, lmms_eval_model._LocalLMMBase)
        with pytest.raises(ImportError, match="lmms-eval is not installed"):
            lmms_eval_model.register()


def test_generate_until_runs_episodes_in_request_order(lmm):
    docs = make_docs(6)
    order = [4, 0, 5, 2, 1, 3]
    lmm.task_dict = {TASK: {SPLIT: docs}}
    lmm.records.clear()
    answers = lmm.generate_until(make_requests(docs, order))

    # the same requests straight through the engine, in the same order and batches
    from visionthink.engines.transformers_engine import Request

    episodes = lmm.engine.run([Request(docs[i]["image"], docs[i]["question"]) for i in order], "visionthink")
    assert answers == [e.answer if e.answer is not None else lmm._final_text(e) for e in episodes]
    assert all(isinstance(a, str) and a for a in answers)
    assert [r["doc_id"] for r in lmm.records] == order
    assert [r["answer"] for r in lmm.records] == answers
    for record, episode in zip(lmm.records, episodes, strict=True):
        assert record["task"] == TASK and record["split"] == SPLIT
        assert record["resized"] == episode.resized
        assert record["visual_tokens"] == episode.visual_tokens == sum(record["visual_tokens_per_turn"])
        assert len(record["visual_tokens_per_turn"]) == (2 if record["resized"] else 1)
        assert record["full_res_visual_tokens"] > record["visual_tokens_per_turn"][0] > 0
    # the trained tiny model gets most of these synthetic questions right
    correct = sum(a == docs[i]["answer"] for a, i in zip(answers, order, strict=True))
    assert correct >= len(order) // 2, (answers, [docs[i]["answer"] for i in order])

    summary = lmm.cost_summary()[TASK]
    assert summary["n"] == len(order)
    assert summary["resize_ratio"] == sum(r["resized"] for r in lmm.records) / len(order)
    assert 0 < summary["visual_tokens_vs_full"] <= 2


@pytest.mark.parametrize("mode", ["full", "low"])
def test_fixed_resolution_modes_cost(lmm, mode):
    docs = make_docs(3)
    lmm.task_dict = {TASK: {SPLIT: docs}}
    lmm.records.clear()
    lmm.mode = mode
    try:
        answers = lmm.generate_until(make_requests(docs, [0, 1, 2]))
    finally:
        lmm.mode = "visionthink"
    assert len(answers) == 3
    for record in lmm.records:
        assert not record["resized"]
        if mode == "full":
            assert record["visual_tokens"] == record["full_res_visual_tokens"]
        else:
            assert record["visual_tokens"] < record["full_res_visual_tokens"]


def test_model_args_string(shipped_model_dir):
    lmm = VisionThinkLMM.create_from_arg_string(
        f"pretrained={shipped_model_dir},mode=low,max_new_tokens=32",
        {"batch_size": "4", "max_batch_size": None, "device": None},  # what lmms-eval's evaluator adds
    )
    assert (lmm.mode, lmm.batch_size, lmm.engine.batch_size) == ("low", 4, 4)
    assert lmm.engine.sampling.max_new_tokens == 32


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        VisionThinkLMM(mode="oracle", engine=object())
    with pytest.raises(ValueError, match="unknown model_args"):
        VisionThinkLMM(temprature=0.2, engine=object())
    with pytest.raises(ValueError, match="batch_size"):
        VisionThinkLMM(batch_size=0, engine=object())
    assert VisionThinkLMM(batch_size="auto", engine=object()).batch_size == 8


class ScriptedEngine:
    """Returns a fixed assistant text per request, recording what it was asked."""

    def __init__(self, texts):
        self.texts = list(texts)
        self.calls = []

    def run(self, requests, mode):
        self.calls.append((len(requests), mode))
        episodes = []
        for request in requests:
            text = self.texts.pop(0)
            turn = protocol.parse_turn(text)
            episodes.append(protocol.Episode(
                messages=[*protocol.first_turn(request.question, request.image), protocol.assistant_turn(text)],
                answer=turn.answer if turn.kind == "answer" else None, resized=False, turns=[turn],
                visual_tokens_per_turn=[4], full_res_visual_tokens=16, mode=mode))
        return episodes


def test_answer_fallbacks_until_and_batching(tmp_path):
    docs = make_docs(3)
    engine = ScriptedEngine([
        protocol.answer_text("look", "red\n\nextra"),  # answered: `until` cuts the answer
        "<think>no answer block</think> \\boxed{7}",  # no <answer>: the boxed value of the last turn
        "just words",  # neither: the last turn's text
    ])
    lmm = VisionThinkLMM(engine=engine, batch_size=2, records_path=str(tmp_path / "records.jsonl"))
    lmm.task_dict = {TASK: {SPLIT: docs}}
    answers = lmm.generate_until(make_requests(docs, [0, 1, 2], {"until": ["\n\n"], "max_new_tokens": 16}))
    assert answers == ["red", "7", "just words"]
    assert engine.calls == [(2, "visionthink"), (1, "visionthink")]
    assert [r["visual_tokens"] for r in lmm.records] == [4, 4, 4]
    saved = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["doc_id"], r["answer"], r["visual_tokens"]) for r in saved] == [(0, "red", 4), (1, "7", 4),
                                                                               (2, "just words", 4)]


def test_unsupported_requests():
    docs = [{"image": None}]
    lmm = VisionThinkLMM(engine=ScriptedEngine([]))
    lmm.task_dict = {TASK: {SPLIT: docs}}
    with pytest.raises(ValueError, match="needs one image"):
        lmm.generate_until([FakeInstance(("q", {}, lambda doc: [], 0, TASK, SPLIT))])
    with pytest.raises(KeyError, match="no document"):
        lmm.generate_until([FakeInstance(("q", {}, doc_to_visual, 5, TASK, SPLIT))])
    with pytest.raises(NotImplementedError, match="loglikelihood is not supported"):
        lmm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm.generate_until_multi_round([])


@pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval not installed (optional extra `lmms-eval`, pulls a CUDA torch)")
def test_registration_with_lmms_eval():
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import MODEL_REGISTRY

    assert lmms_eval_model.register() is VisionThinkLMM
    assert issubclass(VisionThinkLMM, lmms)
    assert MODEL_REGISTRY["visionthink"] is VisionThinkLMM
    from lmms_eval import models

    assert models.get_model("visionthink") is VisionThinkLMM
    manifest = lmms_eval_model.manifest()  # the payload for an `lmms_eval.models` entry point
    assert (manifest.model_id, manifest.simple_class_path) == ("visionthink", lmms_eval_model.CLASS_PATH)

    # a real lmms-eval Instance, as its tasks build them for generate_until
    docs = make_docs(1)
    lmm = VisionThinkLMM(engine=ScriptedEngine([protocol.answer_text("t", "blue")]))
    lmm.task_dict = {TASK: {SPLIT: docs}}
    instance = Instance(request_type="generate_until", idx=0,
                        arguments=("q", {"until": ["\n\n"]}, doc_to_visual, 0, TASK, SPLIT),
                        metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    assert lmm.generate_until([instance]) == ["blue"]
