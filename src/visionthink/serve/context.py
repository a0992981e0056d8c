"""The token count of a request after templating, against the model's context.

Text limits in characters say little about tokens (a word-level vocabulary turns 100,000
characters into tens of thousands of tokens). The server renders each request with the
model's chat template, counts its tokens (image placeholders expanded to their visual
tokens) and refuses, before any model work, a request whose prompt plus its generation
budget would not fit in the context.
"""

from __future__ import annotations

import copy
import threading

from PIL import Image

from visionthink import protocol
from visionthink.errors import VisionThinkError
from visionthink.images import PixelGrid
from visionthink.modes import Mode, get_mode
from visionthink.profiles import ProtocolProfile, get_profile
from visionthink.serve.errors import ApiError
from visionthink.tokens import render_text

_PLACEHOLDER = Image.new("RGB", (28, 28))


def context_length(config) -> int:
    """A model's context in tokens (its text config's position table), from its `config`."""
    text = getattr(config, "text_config", None) or config
    return int(text.max_position_embeddings)


def folder_context_length(model_dir) -> int:
    """`context_length` of a model folder's config (default: the shipped model), read without its weights."""
    from transformers import AutoConfig

    from visionthink.models.loading import default_model_dir

    folder = model_dir or default_model_dir()
    try:
        return context_length(AutoConfig.from_pretrained(str(folder)))
    except (OSError, ValueError) as error:
        raise VisionThinkError(f"{folder}: cannot read its config ({error})") from None


class TokenBudget:
    """Counts prompt tokens like the processor does, from any thread (with a tokenizer of its own)."""

    def __init__(self, processor, context: int, protocol=None):
        self.processor = processor
        self.protocol = get_profile(protocol)
        """The conversation format the engine renders (`profiles`; default `visionthink`)."""
        self.grid: PixelGrid = processor.grid
        self.tokenizer = copy.deepcopy(processor.tokenizer)
        self.context = context
        self._lock = threading.Lock()

    def count(self, text: str, visual: list[int]) -> int:
        """Tokens of rendered `text` whose image placeholders stand for `visual[i]` tokens each."""
        with self._lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) + sum(visual) - len(visual)

    def visionthink(self, question: str, size: tuple[int, int], mode: str | Mode, max_new_tokens: int,
                    profile: ProtocolProfile | None = None) -> int:
        """Prompt tokens of the first turn (`prompt_tokens` of a one-turn episode) under `profile` (default: the
        engine's); refuses what cannot fit.

        A `visionthink` or `zoom` episode may add a second turn: any offered tool's call and its turn with an image as
        large as the full-resolution view (a zoom's crop is never larger), and another `max_new_tokens`, all counted.
        """
        profile = profile or self.protocol
        high = self.grid.high_size(*size)
        low = self.grid.low_size(*size, halve_original=profile.halves_original)
        mode = get_mode(mode)
        first_view = high if mode.first_view == "high" else low
        messages = profile.first_turn(question, _PLACEHOLDER)
        prompt = self.count(render_text(self.processor, messages, add_generation_prompt=True, protocol=profile),
                            [self.grid.tokens(*first_view)])
        needed = prompt + max_new_tokens
        if mode.calls != "never":
            tails = [[protocol.assistant_turn(profile.call_text("", tool.name, tool.widest_arguments(low))),
                      profile.tool_turn(tool, _PLACEHOLDER)] for tool in profile.tools]
            whole = max(self.count(render_text(self.processor, [*messages, *tail], add_generation_prompt=True,
                                               protocol=profile), [self.grid.tokens(*low), self.grid.tokens(*high)])
                        for tail in tails)
            needed = whole + 2 * max_new_tokens
        self._check(prompt, needed, max_new_tokens)
        return prompt

    def raw(self, messages: list[protocol.Message], tools: list[dict] | None, max_new_tokens: int) -> int:
        """Prompt tokens of a raw-mode request (images already decoded); refuses what cannot fit."""
        text = self.processor.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=True)
        visual = [self.grid.tokens(*self.grid.snap(*image.size)) for image in protocol.images_in(messages)]
        prompt = self.count(text, visual)
        self._check(prompt, prompt + max_new_tokens, max_new_tokens)
        return prompt

    def _check(self, prompt: int, needed: int, max_new_tokens: int) -> None:
        if needed > self.context:
            raise ApiError(400, f"this request needs up to {needed} tokens (a prompt of {prompt} after templating, "
                           f"max_tokens {max_new_tokens} per assistant turn), over the model's context of "
                           f"{self.context} tokens; send less text or a lower max_tokens", "context_length_exceeded",
                           param="messages")

