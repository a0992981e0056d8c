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

import torch
from torch import nn

from visionthink import protocol
from visionthink.tokens import IGNORE_INDEX
from visionthink.train.sft_data import direct_answer_logits, think_for


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
