"""A Qwen2.5-VL processor for still images that needs no torchvision (no video processor)."""

from __future__ import annotations

from importlib import resources

from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

from visionthink.images import PixelGrid

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
"""Qwen2.5's special tokens, in id order (151643 onwards in the real vocabulary)."""


def chat_template() -> str:
    """The project's chat template: Qwen2.5 format with tools and images, prefix-preserving."""
    return resources.files("visionthink.models").joinpath("chat_template.jinja").read_text()


class VisionThinkProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only: an image processor and a tokenizer, no video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @property
    def grid(self) -> PixelGrid:
        """The pixel grid the image processor accepts."""
        size = self.image_processor.size
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        return PixelGrid(factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`ProcessorMixin.save_pretrained`, plus what lets `AutoProcessor` load the folder (`add_auto_processor`)."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        add_auto_processor(save_directory)
        return saved


AUTO_PROCESSOR_MODULE = "processing_visionthink"
AUTO_PROCESSOR_SOURCE = '''"""Lets `AutoProcessor(..., trust_remote_code=True)` load this folder's processor:
`transformers serve --trust-remote-code` and `vllm serve --trust-remote-code` then see its images (without it they
fall back to the tokenizer, or need torchvision for the stock Qwen2.5-VL processor). Needs `pip install visionthink`.
"""

from visionthink.models.processor import VisionThinkProcessor

__all__ = ["VisionThinkProcessor"]
'''


def add_auto_processor(folder) -> None:
    """Make a model folder's processor loadable by `AutoProcessor` with `trust_remote_code`: a two-line module that
    imports `VisionThinkProcessor` from this package, named in `processor_config.json`'s `auto_map`."""
    import json
    from pathlib import Path

    folder = Path(folder)
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoProcessor": f"{AUTO_PROCESSOR_MODULE}.VisionThinkProcessor"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / f"{AUTO_PROCESSOR_MODULE}.py").write_text(AUTO_PROCESSOR_SOURCE, encoding="utf-8")
