"""Load any supported VLM folder (tiny or Qwen2.5-VL) as (model, processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from visionthink.errors import ModelError
from visionthink.models.processor import VisionThinkProcessor, chat_template


def default_model_dir() -> Path:
    """The shipped checkpoint: `checkpoints/tiny-synth` in the repository."""
    return Path(__file__).resolve().parents[3] / "checkpoints" / "tiny-synth"


def load_model(model_dir: str | Path | None = None, dtype: torch.dtype | str = "auto", device: str = "cpu"):
    """(model, processor) from a `save_pretrained` folder, with the project's chat template applied."""
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json); train one with `visionthink train sft`")
    try:
        processor = VisionThinkProcessor.from_pretrained(str(path))
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot load model ({error})") from error
    processor.chat_template = chat_template()  # the protocol's rendering, whatever the folder ships
    processor.tokenizer.chat_template = processor.chat_template
    model.to(device).eval()
    return model, processor
