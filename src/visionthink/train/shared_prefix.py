"""One forward pass for a batch whose rows start with the same tokens: the shared prefix once.

Every protocol conversation opens with the same system prompt and tool block (about half of a tiny
model's training sequence). Its keys and values are computed for one row and broadcast to the batch;
gradients flow through that single computation. Logits equal the plain forward pass (tested).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from visionthink.compat import cache_arg


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, stop_id: int) -> int:
    """Tokens every row shares at its start, cut before the first `stop_id` (an image's start) and one
    short of the whole row, so each row keeps at least one token of its own."""
    same = (input_ids == input_ids[:1]).all(0) & (attention_mask == 1).all(0) & (input_ids[0] != stop_id)
    differs = (~same).nonzero()
    shared = int(differs[0]) if len(differs) else input_ids.shape[1]
    return max(0, min(shared, input_ids.shape[1] - 1))


def forward_with_shared_prefix(model, batch: dict[str, torch.Tensor], **kwargs):
    """`model(**batch, **kwargs)` computing the rows' common prefix once. Returns (outputs, prefix_length):
    logits, labels and hidden states of the outputs start at `prefix_length`."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prefix = shared_prefix_length(ids, mask, model.config.vision_start_token_id)
    if prefix == 0:
        return model(**batch, **kwargs), 0
    positions, _ = model.model.get_rope_index(
        ids, mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=mask)
    cache = DynamicCache()
    model.model.language_model(input_ids=ids[:1, :prefix], position_ids=positions[:, :1, :prefix],
                               **cache_arg(cache), use_cache=True)
    for layer in cache.layers:
        layer.keys = layer.keys.expand(len(ids), -1, -1, -1)
        layer.values = layer.values.expand(len(ids), -1, -1, -1)
    rest = {key: batch[key][:, prefix:] for key in ("input_ids", "mm_token_type_ids", "labels") if key in batch}
    images = {key: batch[key] for key in ("pixel_values", "image_grid_thw") if key in batch}
    outputs = model(**rest, **images, attention_mask=mask, position_ids=positions[:, :, prefix:],
                    **cache_arg(cache), use_cache=False, **kwargs)
    return outputs, prefix
