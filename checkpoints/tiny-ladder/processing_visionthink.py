"""Lets `AutoProcessor(..., trust_remote_code=True)` load this folder's processor:
`transformers serve --trust-remote-code` and `vllm serve --trust-remote-code` then see its images (without it they
fall back to the tokenizer, or need torchvision for the stock Qwen2.5-VL processor). Needs `pip install visionthink`.
"""

from visionthink.models.processor import VisionThinkProcessor

__all__ = ["VisionThinkProcessor"]
