"""`VisionThinkGRPOTrainer`: TRL's `GRPOTrainer` with the batch scored once and dropped groups out of the loss.

TRL's private hooks used here (pyproject pins `trl` to the minor version they were written for):

- `_calculate_rewards(inputs, prompts, completions, completion_ids_list)`: scores the batch once and hands the
  terms to TRL's reward loop as input columns;
- `_generate_and_score_completions(inputs)`: its output dict (`tool_mask`, `completion_mask`, `advantages`,
  `completion_ids`, `image_grid_thw`, `num_items_in_batch`) is edited to leave rows out of the loss;
- `_generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)`: the
  `explore_direct` probes generate with `<tool_call>` banned;
- `_log_metric(name, value)` and `_metrics["train"]`: per-batch metrics;
- `_tokenize_prompts(prompts)`: its image fields are stacked into tensors (`stacked_image_fields`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from visionthink.train.grpo_rewards import VisionThinkRewards


class VisionThinkGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` that leaves tied (and optionally judge-failed) groups and `explore_direct` probes out of the
    loss, and adds the perception anchor's loss.

    TRL keeps every group; a tied group has zero advantage but still counts in the KL term and the loss
    normaliser. After TRL scores the batch, their rows of `tool_mask` (TRL's loss mask for multi-turn
    completions) are zeroed and `num_items_in_batch` is recounted. The batch is not re-sampled, so a step can
    have fewer (or no) rows that learn.
    """

    def __init__(self, *args, rewards: VisionThinkRewards, anchors=None, explore_direct: int = 0,
                 probe_loss: str = "none", probe_decoding: str = "sample", **kwargs):
        """`rewards` scores each batch and gives TRL its reward functions; the others are the `VisionThinkGRPOConfig`
        fields of the same names."""
        super().__init__(*args, reward_funcs=rewards.reward_funcs, **kwargs)
        self.rewards = rewards
        self.anchors = anchors
        """`grpo_anchor.Anchors` or None: their loss is added to every training micro-step's."""
        self.explore_direct = explore_direct
        self.probe_loss = probe_loss
        self.probe_decoding = probe_decoding
        self.images_in_loss: list[int] = []
        """Images per batch in the loss pass (prompt images plus those the tool returned)."""
        self._keep_mask: list[bool] | None = None
        """The last scored batch's keep mask, until `_generate_and_score_completions` applies it."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        scores = self.rewards.score_batch(prompts, completions, completion_ids_list, inputs, self._log_metric)
        self._keep_mask = scores.keep
        rows = [{**row, **terms} for row, terms in zip(inputs, scores.columns(), strict=True)]
        return super()._calculate_rewards(rows, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        keep, self._keep_mask = self._keep_mask, None
        if self.model.training:
            grid = output.get("image_grid_thw")
            self.images_in_loss.append(0 if grid is None else int(grid.shape[0]))
            rows_here = output["completion_ids"].shape[0]
            if keep is not None and len(keep) == rows_here:
                self._leave_rows_out(output, self._probe_rule(output, keep, rows_here))
        return output

    def _probe_rule(self, output: dict[str, Any], keep: list[bool], rows_here: int) -> list[bool]:
        """The keep mask with the `explore_direct` probes applied: out of the loss (`probe_loss: none`) or kept
        with their advantages clamped at 0 (`positive`)."""
        if not self.explore_direct:
            return keep
        forced = self._forced_direct_rows(rows_here)
        if self.probe_loss == "positive":  # learn only from probes that beat their group
            index = torch.tensor(forced, device=output["advantages"].device)
            output["advantages"][index] = output["advantages"][index].clamp(min=0)
            return keep
        probes = set(forced)  # rewards only
        return [k and i not in probes for i, k in enumerate(keep)]

    def _leave_rows_out(self, output: dict[str, Any], keep: list[bool]) -> None:
        """Zero the dropped rows of `tool_mask` and recount `num_items_in_batch` (a collective: every process
        calls it, dropping or not)."""
        device = output["completion_mask"].device
        rows = torch.tensor(keep, device=device, dtype=output["completion_mask"].dtype).unsqueeze(1)
        mask = output.get("tool_mask")
        mask = torch.ones_like(output["completion_mask"]) if mask is None else mask
        output["tool_mask"] = mask * rows
        loss_mask = output["completion_mask"] * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        return prompt_ids, images, stacked_image_fields(fields)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        forced = [] if has_tool_images or self.use_vllm else self._forced_direct_rows(len(prompt_ids))
        if not forced:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        from transformers import LogitsProcessorList

        model = self.accelerator.unwrap_model(self.model)  # the module TRL generates with
        tool_id = self.processing_class.tokenizer.convert_tokens_to_ids("<tool_call>")
        ban = RowTokenBan(forced, tool_id, greedy=self.probe_decoding == "greedy")
        model.generate = functools.partial(type(model).generate, model, logits_processor=LogitsProcessorList([ban]))
        try:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        finally:
            del model.generate
            self._metrics["train"]["rollouts/forced_direct"].append(len(forced) / max(1, len(prompt_ids)))

    def _forced_direct_rows(self, n: int) -> list[int]:
        """Local rows whose place in their group is among the last `explore_direct`."""
        group = self.num_generations
        first = self.accelerator.process_index * n
        return [i for i in range(n) if (first + i) % group >= group - self.explore_direct]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.anchors is not None and self.model.training:
            anchor = self.anchors(model)
            for name, value in self.anchors.last.items():
                self._metrics["train"][f"{name}/loss"].append(value)
            loss = loss + anchor / self.args.gradient_accumulation_steps
        return loss


IMAGE_FIELDS = ("pixel_values", "image_grid_thw")


def stacked_image_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with image fields that are lists of NumPy rows stacked into one tensor. TRL's per-environment
    prompts (`environment_factory`) leave a NumPy-returning processor's rows in a list, and its tool loop, on a turn
    whose tool calls all returned text (no image), split them by `image_grid_thw` and crashed mid-run
    (`'list' object has no attribute 'prod'`)."""
    return {key: torch.from_numpy(np.stack(value))
            if key in IMAGE_FIELDS and isinstance(value, list) and value and isinstance(value[0], np.ndarray)
            else value for key, value in fields.items()}


class RowTokenBan:
    """A logits processor that forbids one token in some rows of a generation batch and, with `greedy`,
    leaves those rows only their best remaining token (sampling then picks it whatever the temperature)."""

    def __init__(self, rows: list[int], token_id: int, greedy: bool = False):
        self.rows = rows
        self.token_id = token_id
        self.greedy = greedy

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[self.rows, self.token_id] = float("-inf")
        if self.greedy and self.rows:
            rows = torch.tensor(self.rows, device=scores.device)
            best = scores[rows].argmax(-1)
            scores[rows] = float("-inf")
            scores[rows, best] = 0.0
        return scores
