"""An optional perception anchor for GRPO: supervised cross-entropy on low-resolution direct answers.

RL samples at temperature 1. Where the model reads a label at low resolution with a flat answer
distribution (right on argmax, 40% of the mass), resizing pays more than answering, every rollout
resizes, and the direct answer is never sampled again: the paper's penalty (r < theta) then keeps
it that way. The anchor is the PPO-ptx idea: each step it adds `weight` x the cross-entropy of the
ground-truth direct answer (first turn at low resolution, answered without the tool) for a few rows
of the training data. The `<tool_call>` logit is masked out of that softmax, so the anchor sharpens
WHAT the model answers and leaves WHETHER to resize to the rewards.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from visionthink import protocol
from visionthink.data import synth
from visionthink.images import PixelGrid, make_views
from visionthink.tokens import IGNORE_INDEX
from visionthink.train.sft_data import direct_answer_logits, label_zoom_box, think_for


def direct_answer_messages(row: dict[str, Any]) -> list[protocol.Message]:
    """The row's low-res first turn, answered directly with its ground truth."""
    answer = protocol.answer_text(think_for(row["question"]), str(row["answer"]))
    return protocol.first_turn(row["question"], row["image"]) + [protocol.assistant_turn(answer)]


def anchor_loss(model, processor, rows: list[dict[str, Any]]) -> torch.Tensor:
    """Mean cross-entropy over the assistant tokens of `rows`' direct answers, `<tool_call>` masked out."""
    logits, targets = direct_answer_logits(model, processor, [direct_answer_messages(row) for row in rows])
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


class AnswerAnchor:
    """Draws `batch_size` random rows of `dataset` per call and returns `weight` x their anchor loss."""

    def __init__(self, dataset, processor, weight: float, batch_size: int = 8, seed: int = 0):
        self.dataset = dataset
        self.processor = processor
        self.weight = weight
        self.batch_size = batch_size
        self.rng = random.Random(seed)

    def __call__(self, model) -> torch.Tensor:
        picks = [self.rng.randrange(len(self.dataset)) for _ in range(self.batch_size)]
        return self.weight * anchor_loss(model, self.processor, [self.dataset[i] for i in picks])


def box_anchor_messages(rng: np.random.Generator, grid: PixelGrid) -> list[protocol.Message]:
    """A fresh training scene's label question under the zoom prompts, answered by the zoom call on the label's
    true box (whole low-view pixels that cover it, as SFT teaches it)."""
    from visionthink.profiles import VISIONTHINK_ZOOM

    scene = synth.make_scene(rng)
    views = make_views(scene.image, grid)
    question = synth.pick_wording(rng, "pattern", "train")
    call = VISIONTHINK_ZOOM.call_text(think_for(question, "pattern"), "zoom_image",
                                      {"box": label_zoom_box(scene, views)})
    return VISIONTHINK_ZOOM.first_turn(question, views.low) + [protocol.assistant_turn(call)]


def box_anchor_loss(model, processor, conversations: list[list[protocol.Message]]) -> torch.Tensor:
    """Mean cross-entropy over what follows `<tool_call>` in each conversation's last turn (the call's name and box):
    where to zoom, given a zoom. The decision (`<tool_call>` itself) and everything before it carry no loss."""
    logits, targets = direct_answer_logits(model, processor, conversations, profile="visionthink-zoom")
    tool_call = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    targets = targets.clone()
    for row in range(targets.shape[0]):
        at = (targets[row] == tool_call).nonzero().flatten()
        targets[row, : int(at[-1]) + 1] = IGNORE_INDEX
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


class BoxAnchor:
    """`batch_size` fresh scenes per call; returns `weight` x their `box_anchor_loss` (PPO-ptx on the zoom's box).
    GRPO rewards a zoom's answer, not its box: a box that grows still finds the label, so without this the boxes
    drift away from the label's (docs/zoom.md). The generator's label box supervises it, as it does in SFT."""

    def __init__(self, processor, weight: float, batch_size: int = 8, seed: int = 0):
        self.processor = processor
        self.weight = weight
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __call__(self, model) -> torch.Tensor:
        grid = self.processor.grid
        conversations = [box_anchor_messages(self.rng, grid) for _ in range(self.batch_size)]
        return self.weight * box_anchor_loss(model, self.processor, conversations)


class Anchors:
    """The sum of several anchors' losses; each one's unweighted loss is kept in `last` for the logs."""

    def __init__(self, named: dict[str, AnswerAnchor | BoxAnchor]):
        self.named = named
        self.last: dict[str, float] = {}

    def __call__(self, model) -> torch.Tensor:
        total = 0.0
        for name, anchor in self.named.items():
            loss = anchor(model)
            self.last[name] = loss.item() / anchor.weight
            total = total + loss
        return total
