"""Deepen a model's text decoder without changing what it computes.

Each new decoder layer is a copy of the last one whose residual branches start at zero (attention output and MLP
down projections zeroed), so the grown model's outputs equal the original's until training moves them. A stage can
then give the text model more depth and keep everything it has learned.
"""

import copy

import torch
from transformers import PreTrainedModel


def add_text_layers(model: PreTrainedModel, count: int) -> None:
    """Append `count` identity-initialised decoder layers to `model`'s text model (in place) and its config."""
    if count < 0:
        raise ValueError(f"add_text_layers needs count >= 0, got {count}")
    layers = model.model.language_model.layers
    text_config = model.config.text_config
    for _ in range(count):
        layer = copy.deepcopy(layers[-1])
        with torch.no_grad():
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        layer.self_attn.layer_idx = len(layers)
        layers.append(layer)
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = list(text_config.layer_types) + [text_config.layer_types[-1]] * count
