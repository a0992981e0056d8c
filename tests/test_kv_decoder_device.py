"""`KVDecoder`'s device path (logits kept where the model computed them, tokens chosen there) run on the CPU by
forcing `keep_on_device`: it writes the same tokens as the host path, greedy and seeded sampling."""

from __future__ import annotations

import functools

import pytest
import torch

from visionthink.engines import kv_decoder, transformers_engine
from visionthink.engines.kv_decoder import Banned, KVDecoder, SamplingConfig, generator_on
from visionthink.engines.transformers_engine import Request, TransformersEngine

SAMPLED = SamplingConfig(max_new_tokens=48, do_sample=True, temperature=1.3, top_k=40, top_p=0.9, seed=11)


def episodes(model, processor, items, sampling: SamplingConfig, keep_on_device: bool, monkeypatch, mode: str):
    with monkeypatch.context() as patch:
        patch.setattr(transformers_engine, "KVDecoder", functools.partial(KVDecoder, keep_on_device=keep_on_device))
        if keep_on_device:
            patch.setattr(kv_decoder, "greedy", _no_host_greedy)
        engine = TransformersEngine(model, processor, sampling, batch_size=4)
        return engine.run([Request(i.image, i.question, i.needs_high_res) for i in items], mode)


def _no_host_greedy(logits):
    raise AssertionError("the device path chose through the host's NumPy argmax")


@pytest.mark.parametrize(("sampling", "mode"), [(SamplingConfig(max_new_tokens=48), "visionthink"),
                                                (SamplingConfig(max_new_tokens=48), "oracle"),
                                                (SAMPLED, "visionthink")])
def test_the_device_path_writes_the_host_paths_tokens(shipped_model, synth_items, monkeypatch, sampling, mode):
    model, processor = shipped_model
    host = episodes(model, processor, synth_items, sampling, False, monkeypatch, mode)
    device = episodes(model, processor, synth_items, sampling, True, monkeypatch, mode)
    assert [e.fed_token_ids for e in device] == [e.fed_token_ids for e in host]
    assert [e.summary()["turns"] for e in device] == [e.summary()["turns"] for e in host]
    if mode == "oracle":
        assert any(e.resized for e in host)  # a second turn ran on the first turn's kept logits


def test_keep_on_device_defaults_to_the_models_device(shipped_model):
    model, processor = shipped_model
    tokenizer = processor.tokenizer
    decoder = KVDecoder(model, tokenizer.pad_token_id, [tokenizer.eos_token_id])
    assert model.device.type == "cpu" and decoder.keep_on_device is False
    logits = torch.randn(2, 5, dtype=torch.bfloat16)
    assert decoder._place(logits).dtype == torch.float32
    forced = KVDecoder(model, tokenizer.pad_token_id, [tokenizer.eos_token_id], keep_on_device=True)
    assert forced.keep_on_device and forced._place(logits).device == logits.device


def test_bans_reach_logits_on_another_device():
    banned = Banned([[3, 1], [], [3, 1], [7]])
    for device in ("cpu", "meta"):
        logits = torch.zeros(4, 9, device=device)
        banned.apply(logits)
        banned.apply(logits[:1], row=3)
        assert logits.device.type == device
    assert set(banned._moved) == {torch.device("meta")}
    assert all(ids.device.type == "meta" for _, ids in banned._moved[torch.device("meta")])
    logits = torch.zeros(4, 9)
    banned.apply(logits)
    assert torch.isinf(logits).nonzero().tolist() == [[0, 1], [0, 3], [2, 1], [2, 3], [3, 7]]


def test_a_host_generator_seeds_one_where_the_logits_are():
    host = torch.Generator().manual_seed(5)
    assert generator_on(host, torch.device("cpu")) is host and generator_on(None, torch.device("cpu")) is None
    if not torch.cuda.is_available():
        pytest.skip("no GPU: a generator on another device cannot be built here")
    device = torch.device("cuda", 0)
    first = generator_on(torch.Generator().manual_seed(5), device)
    again = generator_on(torch.Generator().manual_seed(5), device)
    assert first.device.type == "cuda"
    draws = [torch.rand(4, device=device, generator=g) for g in (first, again)]
    assert torch.equal(*draws)
