"""Models: the tiny Qwen2.5-VL, tokenizers built offline, the image-only processor, loading."""

from visionthink.models.loading import default_model_dir, load_model
from visionthink.models.processor import VisionThinkProcessor, chat_template
from visionthink.models.tiny import TinyModelConfig, build_tiny_model
from visionthink.models.vocab import build_qwen25_tokenizer, build_tiny_tokenizer

__all__ = [
    "TinyModelConfig",
    "VisionThinkProcessor",
    "build_qwen25_tokenizer",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "chat_template",
    "default_model_dir",
    "load_model",
]
