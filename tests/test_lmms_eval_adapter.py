"""The lmms-eval adapter: request handling on CPU with the shipped checkpoint (lmms-eval itself is optional)."""

from __future__ import annotations

import json

import pytest

from visionthink import protocol
from visionthink.data.synth import make_item
from visionthink.engines import factory
from visionthink.errors import VisionThinkError
from visionthink.integrations import lmms_eval_model
from visionthink.integrations.lmms_eval_model import EpisodeTokenCounts, GenerationResult, VisionThinkLMM

try:  # the same test the adapter makes: lmms-eval's model API and GenerationResult import
    import lmms_eval.api.instance
    import lmms_eval.api.model  # noqa: F401

    HAS_LMMS = hasattr(lmms_eval.api.instance, "GenerationResult")
except ImportError:
    HAS_LMMS = False
TASK, SPLIT = "synth_task", "test"
NO_LMMS = "lmms-eval not installed (optional extra `lmms-eval`; docs/lmms-eval.md)"


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


def texts(results) -> list[str]:
    return [result.text for result in results]


def test_module_imports_without_lmms_eval_and_picks_the_right_base():
    assert lmms_eval_model.HAS_LMMS_EVAL == HAS_LMMS
    if not HAS_LMMS:
        assert issubclass(VisionThinkLMM, lmms_eval_model._LocalLMMBase)
        assert GenerationResult is lmms_eval_model._LocalGenerationResult
        assert issubclass(EpisodeTokenCounts, lmms_eval_model._LocalTokenCounts)
        with pytest.raises(ImportError, match="lmms-eval is not installed"):
            lmms_eval_model.register()


def test_token_counts_carry_the_episode_cost():
    counts = EpisodeTokenCounts(input_tokens=40, output_tokens=12, visual_tokens=20, full_res_visual_tokens=16,
                                resized=True)
    assert counts.to_dict() == {"input_tokens": 40, "output_tokens": 12, "visual_tokens": 20,
                                "full_res_visual_tokens": 16, "resized": True}
    assert EpisodeTokenCounts(output_tokens=3).to_dict() == {"output_tokens": 3}  # unknown counts are left out


def test_generate_until_runs_episodes_in_request_order(lmm):
    docs = make_docs(6)
    order = [4, 0, 5, 2, 1, 3]
    lmm.task_dict = {TASK: {SPLIT: docs}}
    lmm.records.clear()
    results = lmm.generate_until(make_requests(docs, order))
    answers = texts(results)

    # the same requests straight through the engine, in the same order and batches
    from visionthink.engines.transformers_engine import Request

    episodes = lmm.engine.run([Request(docs[i]["image"], docs[i]["question"]) for i in order], "visionthink")
    assert answers == [e.answer if e.answer is not None else lmm._final_text(e) for e in episodes]
    assert all(isinstance(a, str) and a for a in answers)
    for result, episode in zip(results, episodes, strict=True):  # lmms-eval's own token counts
        assert isinstance(result, GenerationResult)
        assert result.token_counts.to_dict() == {
            "input_tokens": episode.prompt_tokens, "output_tokens": episode.generated_tokens,
            "visual_tokens": episode.visual_tokens, "full_res_visual_tokens": episode.full_res_visual_tokens,
            "resized": episode.resized}
        assert episode.prompt_tokens > episode.visual_tokens > 0 and episode.generated_tokens > 0
    assert [r["doc_id"] for r in lmm.records] == order
    assert [r["answer"] for r in lmm.records] == answers
    for record, episode in zip(lmm.records, episodes, strict=True):
        assert record["task"] == TASK and record["split"] == SPLIT
        assert record["resized"] == episode.resized
        assert record["visual_tokens"] == episode.visual_tokens == sum(record["visual_tokens_per_turn"])
        assert len(record["visual_tokens_per_turn"]) == (2 if record["resized"] else 1)
        assert record["full_res_visual_tokens"] > record["visual_tokens_per_turn"][0] > 0
        assert (record["prompt_tokens"], record["generated_tokens"]) == (episode.prompt_tokens,
                                                                         episode.generated_tokens)
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
        results = lmm.generate_until(make_requests(docs, [0, 1, 2]))
    finally:
        lmm.mode = "visionthink"
    assert len(results) == 3
    assert [r.token_counts.visual_tokens for r in results] == [r["visual_tokens"] for r in lmm.records]
    for record in lmm.records:
        assert not record["resized"]
        if mode == "full":
            assert record["visual_tokens"] == record["full_res_visual_tokens"]
        else:
            assert record["visual_tokens"] < record["full_res_visual_tokens"]


LMMS_ADDS = {"batch_size": "4", "max_batch_size": None, "device": None}
"""What lmms-eval's evaluator adds to model_args (from its --batch_size and --device flags)."""


def test_model_args_string(shipped_model_dir):
    lmm = VisionThinkLMM.create_from_arg_string(f"pretrained={shipped_model_dir},mode=low,max_new_tokens=32",
                                                LMMS_ADDS)
    assert (lmm.mode, lmm.batch_size, lmm.engine.batch_size) == ("low", 4, 4)
    assert lmm.engine.sampling.max_new_tokens == 32
    assert (lmm.options.engine, lmm.options.device, lmm.protocol) == ("transformers", None, "visionthink")
    assert lmm.engine.device.type == "cpu"  # no device from lmms-eval: the GPU when visible, else the CPU


@pytest.fixture
def built(monkeypatch):
    """The options and sampling `build_engine` is called with (no engine is built)."""
    calls = []

    def build_engine(options, sampling=None, protocol=None):
        calls.append((options, sampling, protocol))
        return ScriptedEngine([])

    monkeypatch.setattr(factory, "build_engine", build_engine)
    return calls


def test_engine_options_from_model_args(built):
    VisionThinkLMM.create_from_arg_string(
        "engine=remote,base_url=http://127.0.0.1:9/v1,served_model=vt-7b,api_key=12345,concurrency=16,"
        "protocol=release,pretrained=models/vt-7b", LMMS_ADDS)
    options, sampling, _ = built[-1]
    assert (options.engine, options.base_url, options.served_model, options.api_key, options.concurrency) == (
        "remote", "http://127.0.0.1:9/v1", "vt-7b", "12345", 16)  # the key stays a string though parsed as a number
    assert (options.protocol, str(options.model), options.batch_size, sampling) == ("release", "models/vt-7b", 4,
                                                                                    None)
    VisionThinkLMM.create_from_arg_string(
        "attn_implementation=sdpa,device_map=auto,dtype=bfloat16,max_new_tokens=256",
        {**LMMS_ADDS, "device": "cuda:1"})
    options, sampling, _ = built[-1]
    assert (options.engine, options.attn_implementation, options.device_map, options.dtype, options.device) == (
        "transformers", "sdpa", "auto", "bfloat16", "cuda:1")
    assert (options.protocol, sampling.max_new_tokens, sampling.do_sample) == ("visionthink", 256, False)
    VisionThinkLMM.create_from_arg_string("engine=vllm,tensor_parallel_size=2,gpu_memory_utilization=0.8", LMMS_ADDS)
    options, _, _ = built[-1]
    assert (options.engine, options.tensor_parallel_size, options.gpu_memory_utilization) == ("vllm", 2, 0.8)
    assert (options.device, options.concurrency) == (None, 8)


@pytest.mark.parametrize(("args", "error", "match"), [
    ("engine=remote", VisionThinkError, "needs --base-url"),
    ("base_url=http://127.0.0.1:9/v1", VisionThinkError, "belong to --engine remote"),
    ("engine=onnx", VisionThinkError, "unknown engine"),
    ("protocol=visionthink-zoom", ValueError, "protocol must be one of"),
    ("engine=remote,base_url=http://127.0.0.1:9/v1,concurrency=0", ValueError, "concurrency"),
    ("engine=vllm,gpu_memory_utilization=1.5", ValueError, "gpu_memory_utilization"),
    ("engine=vllm,gpu_memory_utilization=most", ValueError, "gpu_memory_utilization"),
    ("engine=vllm,tensor_parallel_size=1.5", ValueError, "tensor_parallel_size"),
    ("max_new_tokens=0", ValueError, "max_new_tokens"),
])
def test_bad_engine_options(built, args, error, match):
    with pytest.raises(error, match=match):
        VisionThinkLMM.create_from_arg_string(args, LMMS_ADDS)
    assert not built


def test_auto_device_means_the_gpu_when_visible(monkeypatch):
    """No `device`: the factory leaves it unset and loading picks CUDA when torch sees a GPU."""
    import torch

    from visionthink.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"


def test_release_protocol_through_the_factory(shipped_model_dir):
    """`protocol=release` builds the engine on the authors' prompts and the episodes run on them."""
    from visionthink.engines.base import Request

    lmm = VisionThinkLMM.create_from_arg_string(f"pretrained={shipped_model_dir},protocol=release", LMMS_ADDS)
    assert (lmm.protocol, lmm.engine.protocol.name) == ("release", "release")
    docs = make_docs(2)
    lmm.task_dict = {TASK: {SPLIT: docs}}
    results = lmm.generate_until(make_requests(docs, [0, 1]))
    episodes = lmm.engine.run([Request(d["image"], d["question"]) for d in docs], "visionthink")
    assert texts(results) == [lmm._final_text(e).strip() for e in episodes]
    assert [r.token_counts.input_tokens for r in results] == [e.prompt_tokens for e in episodes]
    from visionthink.profiles import RELEASE

    assert all(e.messages[:2] == RELEASE.first_turn(d["question"], e.messages[1]["content"][1]["image"])
               for e, d in zip(episodes, docs, strict=True))


def test_remote_engine_through_the_adapter(lmm, shipped_model, shipped_model_dir):
    """`engine=remote` against `visionthink serve` over loopback: the same answers and counts as the local engine."""
    from test_serve import serving  # tests/ is on sys.path

    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.serve.app import ServeConfig

    docs = make_docs(4)
    config = ServeConfig(model_name="tiny-remote", api_key="lmms-key", max_batch=8)
    with serving(TransformersEngine(*shipped_model), config) as server:
        remote = VisionThinkLMM.create_from_arg_string(
            f"engine=remote,base_url={server.url}/v1,api_key=lmms-key,concurrency=2,pretrained={shipped_model_dir}",
            LMMS_ADDS)
        assert (type(remote.engine).__name__, remote.engine.batch_size, remote.engine.max_workers) == (
            "RemoteEngine", 4, 2)
        remote.task_dict = {TASK: {SPLIT: docs}}
        got = remote.generate_until(make_requests(docs, [0, 1, 2, 3]))
    lmm.task_dict = {TASK: {SPLIT: docs}}
    want = lmm.generate_until(make_requests(docs, [0, 1, 2, 3]))
    assert texts(got) == texts(want)
    assert [r.token_counts.to_dict() for r in got] == [r.token_counts.to_dict() for r in want]


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
                answer=turn.answer if turn.kind == "answer" else None, turns=[turn],
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
    results = lmm.generate_until(make_requests(docs, [0, 1, 2], {"until": ["\n\n"], "max_new_tokens": 16}))
    assert texts(results) == ["red", "7", "just words"]
    assert [r.token_counts.visual_tokens for r in results] == [4, 4, 4]
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


@pytest.mark.skipif(not HAS_LMMS, reason=NO_LMMS)
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
    [result] = lmm.generate_until([instance])
    from lmms_eval.api.instance import GenerationResult as LmmsResult
    from lmms_eval.api.instance import TokenCounts, unwrap_generation_output

    assert isinstance(result, LmmsResult) and isinstance(result.token_counts, TokenCounts)
    text, counts = unwrap_generation_output(result)  # what lmms-eval's evaluator does with each result
    assert (text, counts.input_tokens, counts.output_tokens, counts.to_dict()["visual_tokens"]) == ("blue", 0, 0, 4)


TASK_YAML = """\
task: vt_synth
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function vt_synth_utils.doc_to_visual
doc_to_text: !function vt_synth_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  until: ["\\n\\n"]
process_results: !function vt_synth_utils.process_results
metric_list:
  - metric: vt_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""
TASK_UTILS = """\
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"vt_match": float(results[0] == doc["answer"])}
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LMMS, reason=NO_LMMS)
def test_lmms_eval_evaluator_on_a_local_task(tmp_path, shipped_model_dir):
    """lmms-eval's own `simple_evaluate` on a task of synthetic items saved to disk: the samples it logs hold the
    episodes' answers, scores and token counts, equal to the engine's run on the same items."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from visionthink.data.export import write_synth_dataset
    from visionthink.data.synth import split_items
    from visionthink.engines.base import Request
    from visionthink.engines.transformers_engine import TransformersEngine

    n = 6
    data = write_synth_dataset(tmp_path / "data", n=n, seed=0, splits=["test"])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "vt_synth.yaml").write_text(TASK_YAML.format(data=data))
    (tasks / "vt_synth_utils.py").write_text(TASK_UTILS)
    lmms_eval_model.register()
    out = evaluator.simple_evaluate(model="visionthink", model_args=f"pretrained={shipped_model_dir}",
                                    tasks=["vt_synth"], batch_size=2, log_samples=True,
                                    task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    samples = sorted(out["samples"]["vt_synth"], key=lambda sample: sample["doc_id"])

    items = split_items("test", n, seed=0)
    engine = TransformersEngine.from_pretrained(shipped_model_dir, batch_size=2)
    episodes = engine.run([Request(item.image, item.question) for item in items], "visionthink")
    assert any(e.resized for e in episodes) and not all(e.resized for e in episodes)
    for sample, episode, item in zip(samples, episodes, items, strict=True):
        answer = VisionThinkLMM._final_text(episode).strip()
        assert sample["filtered_resps"] == [answer]
        assert sample["vt_match"] == float(answer == item.answer)
        assert sample["token_counts"] == [{
            "input_tokens": episode.prompt_tokens, "output_tokens": episode.generated_tokens,
            "visual_tokens": episode.visual_tokens, "full_res_visual_tokens": episode.full_res_visual_tokens,
            "resized": episode.resized}]
    score = out["results"]["vt_synth"]["vt_match,none"]
    assert score == pytest.approx(sum(s["vt_match"] for s in samples) / n)
