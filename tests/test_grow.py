"""Growing the text model: new decoder layers start as identities and then train like the rest."""

from __future__ import annotations

import copy

import pytest
import torch

from visionthink.errors import VisionThinkError
from visionthink.models import load_model
from visionthink.models.grow import add_text_layers
from visionthink.train.sft import SFTConfig, train_sft


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_grown_model_computes_what_it_did_and_saves_its_depth(random_tiny, tmp_path):
    model, processor = random_tiny
    grown = copy.deepcopy(model)
    ids = torch.randint(20, 200, (2, 24))
    before = _logits(model, ids)
    layers = model.config.text_config.num_hidden_layers
    add_text_layers(grown, 3)
    assert grown.config.text_config.num_hidden_layers == layers + 3
    assert len(grown.config.text_config.layer_types) == layers + 3
    assert torch.equal(_logits(grown, ids), before)
    new_layer = grown.model.language_model.layers[-1]
    assert new_layer.self_attn.layer_idx == layers + 2  # its own slot in the KV cache
    source = grown.model.language_model.layers[layers - 1]
    assert new_layer.self_attn.q_proj.weight.data_ptr() != source.self_attn.q_proj.weight.data_ptr()  # a copy

    grown.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path, device="cpu", dtype=torch.float32)
    assert len(loaded.model.language_model.layers) == layers + 3
    assert torch.equal(_logits(loaded.eval(), ids), before)
    with_cache = loaded.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
    without_cache = loaded.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_sft_grows_its_start_and_trains_the_new_layers(tmp_path, tiny_dir):
    config = SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "run"), steps=2, batch_size=4,
                       learning_rate=1e-3, warmup_steps=1, save_every=2, eval_every=2, eval_items=6, threads=1,
                       add_text_layers=2)
    start, _ = load_model(tiny_dir, device="cpu")
    trained, _ = load_model(train_sft(config), device="cpu")
    layers = trained.model.language_model.layers
    assert len(layers) == len(start.model.language_model.layers) + 2
    assert layers[-1].self_attn.o_proj.weight.abs().max() > 0  # started at zero, moved by training


def test_add_text_layers_needs_a_start(tmp_path):
    with pytest.raises(VisionThinkError, match="init_from"):
        train_sft(SFTConfig(output_dir=str(tmp_path / "run"), steps=1, add_text_layers=1))
    with pytest.raises(ValueError, match="count >= 0"):
        add_text_layers(torch.nn.Module(), -1)
