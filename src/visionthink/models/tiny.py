"""The tiny Qwen2.5-VL-architecture model the project trains on the synthetic world."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from visionthink.models.processor import VisionThinkProcessor, chat_template


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model. Defaults: about 2M parameters; images up to 168x112 px (24 visual tokens);
    the smallest low view is one 28 px token."""

    vision_layers: int = 4
    vision_width: int = 128
    vision_heads: int = 4
    text_layers: int = 4
    text_width: int = 128
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 512
    min_pixels: int = 28 * 28
    max_pixels: int = 168 * 112
    seed: int = 0


def tiny_image_processor(config: TinyModelConfig) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)


def build_tiny_model(
    tokenizer, config: TinyModelConfig | None = None
) -> tuple[Qwen2_5_VLForConditionalGeneration, VisionThinkProcessor]:
    """A randomly initialised tiny model and its processor, for the given tokenizer."""
    config = config or TinyModelConfig()
    torch.manual_seed(config.seed)
    head_dim = config.text_width // config.text_heads
    half = head_dim // 2  # mrope sections (time, height, width) must sum to head_dim / 2
    rest = half - half // 4
    mrope_section = [half // 4, rest // 2, rest - rest // 2]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    model_config = Qwen2_5_VLConfig(
        vision_config={
            "depth": config.vision_layers,
            "hidden_size": config.vision_width,
            "intermediate_size": config.vision_width * 2,
            "num_heads": config.vision_heads,
            "out_hidden_size": config.text_width,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": list(range(config.vision_layers)),
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": config.text_width,
            "intermediate_size": config.text_mlp,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "num_key_value_heads": config.text_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "tie_word_embeddings": True,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        tie_word_embeddings=True,
        **ids,
    )
    model = Qwen2_5_VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = VisionThinkProcessor(
        image_processor=tiny_image_processor(config), tokenizer=tokenizer, chat_template=chat_template()
    )
    return model, processor
