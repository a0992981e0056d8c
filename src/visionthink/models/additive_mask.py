"""The text model's attention mask made additive once per forward pass, not once per layer.

Upstream hands PyTorch's SDPA a boolean mask (batch x query x key), and SDPA turns it into an additive
one (0 where a key is seen, -inf where not) inside every attention call, so every layer allocates and
fills it again: at document sizes, batched with a KV cache, that is hundreds of MB a layer. This
registers SDPA under another name whose mask function builds upstream's boolean mask and converts it
once to the very floats SDPA would have made: outputs are bit for bit the same (tests/test_models.py).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "sdpa_additive_mask"
"""The registered attention implementation: SDPA itself, with `additive_sdpa_mask`."""


def additive_sdpa_mask(*args, dtype: torch.dtype = torch.float32, **kwargs) -> torch.Tensor | None:
    """`sdpa_mask`'s boolean mask in SDPA's additive form: 0 where True, -inf where False (None stays None)."""
    mask = sdpa_mask(*args, **kwargs)
    if mask is None:
        return None
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), float("-inf"))


AttentionInterface.register(NAME, sdpa_attention_forward)
AttentionMaskInterface.register(NAME, additive_sdpa_mask)


def use_additive_mask(model) -> None:
    """Make `model`'s text attention SDPA with the mask made additive once per forward pass (same outputs); a
    model whose text attention is not SDPA is left as it is."""
    text = getattr(model.config, "text_config", None)
    if text is not None and text._attn_implementation == "sdpa":
        model.set_attn_implementation({"text_config": NAME})
