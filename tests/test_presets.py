"""`visionthink model init` presets: configs at the published Qwen2.5-VL shapes, folders that `load_model` loads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from visionthink import cli, profiles
from visionthink.models import load_model, presets
from visionthink.models.presets import build_preset, preset_config

QWEN25_SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657,
    "</tool_call>": 151658,
}
"""Published ids of the Qwen2.5(-VL) tokenizer."""


def test_cli_choices_are_the_modules_names():
    assert cli.PRESET_NAMES == presets.NAMES
    assert cli.PROTOCOLS == profiles.NAMES
    from visionthink.engines import factory

    assert cli.ENGINES == factory.ENGINES


def test_7b_shape_config_has_the_7b_widths_and_two_layers():
    """Qwen2.5-VL-7B-Instruct's config.json values, depth cut to 2 (no weights are made: meta device)."""
    config = preset_config("7b-shape-2layer")
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads) == (
        3584, 18944, 28, 4)
    assert (text.num_hidden_layers, text.vocab_size, text.max_position_embeddings) == (2, 152064, 128000)
    assert text.rope_parameters["rope_theta"] == 1000000.0 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert not config.tie_word_embeddings
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (2, 1280, 3420, 16)
    assert (vision.out_hidden_size, vision.patch_size, vision.spatial_merge_size, vision.window_size) == (
        3584, 14, 2, 112)
    assert config.image_token_id == 151655 and config.vision_start_token_id == 151652
    assert text.eos_token_id == 151645
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 1.5e9 < parameters < 1.8e9  # two 152064 x 3584 matrices are 1.09B of it
    assert model.lm_head.weight.shape == (152064, 3584)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        build_preset("13b")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["model", "init", "--preset", "13b", "--out", "x"])


@pytest.mark.parametrize("preset", ["tiny", pytest.param("real-vocab-small", marks=pytest.mark.slow)])
def test_model_init_writes_a_loadable_folder(tmp_path, preset):
    out = tmp_path / preset
    assert cli.main(["model", "init", "--preset", preset, "--out", str(out), "--seed", "3"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    model, processor = load_model(out, device="cpu")
    tokenizer = processor.tokenizer
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size >= len(tokenizer)
    if preset == "real-vocab-small":
        assert len(tokenizer) == 151665
        assert {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN25_SPECIAL_IDS} == QWEN25_SPECIAL_IDS
        image_processor = processor.image_processor
        processor_shape = (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size)
        assert processor_shape == (14, 2, 2)
        assert (processor.grid.factor, processor.grid.min_pixels, processor.grid.max_pixels) == (28, 3136, 12845056)
        assert model.config.text_config.num_hidden_layers == 2 and model.config.vision_config.depth == 2
        assert model.config.image_token_id == 151655
        # the released checkpoints' layout: preprocessor_config.json with Qwen's min_pixels / max_pixels keys
        (out / "processor_config.json").unlink()
        (out / "preprocessor_config.json").write_text(json.dumps({
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
        _, released = load_model(out, device="cpu")
        assert (released.grid.min_pixels, released.grid.max_pixels) == (3136, 12845056)
    else:
        assert processor.grid.max_pixels == 168 * 112


def test_build_preset_is_seeded():
    a, _ = build_preset("tiny", seed=1)
    b, _ = build_preset("tiny", seed=1)
    c, _ = build_preset("tiny", seed=2)
    weight = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])
