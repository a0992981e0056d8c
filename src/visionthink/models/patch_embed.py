"""The vision patch embedding as the matrix product it is.

Qwen2.5-VL embeds each patch with a `Conv3d` whose kernel equals its stride and its input (one
2x14x14x3 patch per row), so the convolution is one linear map of the flattened patch. Run as
`F.linear` over the same weight it takes a fraction of the time on CPU (benchmarks/wall_time.py);
the weight, its name and the state dict are unchanged, so training and saving are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def use_linear_patch_embed(model) -> None:
    """Make `model`'s vision patch embedding a linear map (same weight, same outputs up to float rounding)."""
    embed = model.model.visual.patch_embed
    proj = embed.proj
    if tuple(proj.kernel_size) != tuple(proj.stride) or proj.padding != (0, 0, 0) or proj.groups != 1:
        return  # not the patch-sized convolution this rewrite assumes

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        weight = proj.weight
        flat = hidden_states.to(weight.dtype).reshape(-1, weight[0].numel())
        return F.linear(flat, weight.reshape(weight.shape[0], -1), proj.bias)

    embed.forward = forward
