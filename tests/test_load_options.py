"""`load_model` and `TransformersEngine.from_pretrained` pass `attn_implementation` and `device_map` to transformers."""

from __future__ import annotations

import pytest
import torch

from visionthink.engines.kv_decoder import input_device
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.errors import ModelError
from visionthink.models import load_model


def test_attn_implementation_reaches_the_model_config(shipped_model_dir):
    model, _ = load_model(shipped_model_dir, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "eager"
    engine = TransformersEngine.from_pretrained(shipped_model_dir, attn_implementation="eager")
    assert engine.model.config.text_config._attn_implementation == "eager"  # the additive-mask SDPA leaves it


def test_an_unknown_attn_implementation_is_a_one_line_model_error(shipped_model_dir):
    with pytest.raises(ModelError, match="cannot load model") as error:
        load_model(shipped_model_dir, attn_implementation="no-such-attention")
    assert "\n" not in str(error.value)


def test_a_device_map_loads_without_moving_the_model_afterwards(shipped_model_dir, synth_items):
    pytest.importorskip("accelerate")
    # `device="cuda"` would fail here (no GPU) if the model were moved after loading: the device map places it
    model, _ = load_model(shipped_model_dir, device="cuda", device_map="cpu")
    assert input_device(model) == torch.device("cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    mapped = TransformersEngine.from_pretrained(shipped_model_dir, device_map="cpu", batch_size=4)
    plain = TransformersEngine.from_pretrained(shipped_model_dir, device="cpu", batch_size=4)
    assert mapped.device == plain.device == torch.device("cpu")
    requests = [Request(i.image, i.question, i.needs_high_res) for i in synth_items[:6]]
    ran = [engine.run(requests, "visionthink") for engine in (mapped, plain)]
    assert [e.fed_token_ids for e in ran[0]] == [e.fed_token_ids for e in ran[1]]
