"""Load any supported VLM folder (tiny or Qwen2.5-VL) as (model, processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from visionthink.errors import ModelError
from visionthink.models.patch_embed import use_linear_patch_embed
from visionthink.models.processor import VisionThinkProcessor, chat_template


def default_model_dir() -> Path:
    """The default model of `ask`, `demo` and `serve`: the shipped ladder model, `checkpoints/tiny-ladder` in the
    repository (it answers, zooms or resizes; `checkpoints/tiny-synth` is the paper's resize-only model)."""
    return Path(__file__).resolve().parents[3] / "checkpoints" / "tiny-ladder"


DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None = None) -> str:
    """`device` (default `auto`: `cuda` when a GPU is visible, else `cpu`)."""
    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: torch.dtype | str | None = None) -> torch.dtype | str:
    """`dtype` (default `auto`: the checkpoint's own dtype)."""
    dtype = dtype or "auto"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def load_model(model_dir: str | Path | None = None, dtype: torch.dtype | str | None = None,
               device: str | None = None, attn_implementation: str | None = None,
               device_map: str | dict | None = None):
    """(model, processor) from a `save_pretrained` folder, with the project's chat template applied.

    `device` defaults to the GPU when one is visible, `dtype` to the checkpoint's own.
    `attn_implementation` picks transformers' attention (`sdpa`, `flash_attention_2` (needs flash-attn), `eager`;
    default: transformers' choice, SDPA where it can).
    `device_map` (`auto`, `cpu`, ... or a module -> device dict; needs accelerate) spreads a model too large for one
    GPU over the visible ones; `device` is then not used, and inputs go where the input embeddings are
    (`engines.kv_decoder.input_device`).
    """
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json); train one with `visionthink train sft`")
    options = {"dtype": dtype}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if device_map is not None:
        options["device_map"] = device_map
    try:
        processor = _processor(path)
        model = AutoModelForImageTextToText.from_pretrained(str(path), **options)
    except (OSError, ValueError, ImportError) as error:
        raise ModelError(f"{path}: cannot load model ({_one_line(error)})") from error
    use_linear_patch_embed(model)
    if device_map is None:
        model.to(device)
    model.eval()
    return model, processor


def load_processor(model_dir: str | Path | None = None) -> VisionThinkProcessor:
    """The processor of a model folder (default: the shipped one) with the project's chat template, and no weights:
    what a client of a server that serves the folder needs (pixel grid, tokenizer, rendering)."""
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json)")
    try:
        return _processor(path)
    except (OSError, ValueError, ImportError) as error:
        raise ModelError(f"{path}: cannot load its processor ({_one_line(error)})") from error


def _processor(path: Path) -> VisionThinkProcessor:
    """The folder's processor with the project's chat template: the protocol's rendering, whatever the folder ships."""
    processor = VisionThinkProcessor.from_pretrained(str(path))
    processor.chat_template = chat_template()
    processor.tokenizer.chat_template = processor.chat_template
    return processor


def _one_line(error: Exception) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split())
