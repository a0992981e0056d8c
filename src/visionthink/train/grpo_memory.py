"""The GPU memory of GRPO on a Qwen2.5-VL model, term by term (docs/real-models.md, "Memory plan").

`memory_plan(config, processes)` estimates the peak of one training GPU under DeepSpeed ZeRO-3 from the recipe's
numbers: model states, the reference model, ZeRO-3's gathered parameters, the rollout buffer TRL keeps on the device
for `steps_per_generation` micro-steps (the images' `pixel_values` dominate it), and one micro-step's activations at
the longest sequence the recipe allows. `tests/test_recipe_7b.py` holds `recipes/qwen2.5-vl-7b.yaml` to it.

Visual tokens follow Qwen2.5-VL's smart resize (28 px per token, 14 px patches merged 2x2): `largest_visual_tokens`
is the most an image of at most `max_pixels` pixels can cost, over every aspect ratio the processor accepts (<= 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9
PATCH_VALUES = 3 * 2 * 14 * 14
"""Values per 14 px patch in Qwen2.5-VL's `pixel_values` (RGB x 2 frames x 14 x 14), float32."""
PATCHES_PER_TOKEN = 4
"""2 x 2 patches merge into one visual token."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model."""

    parameters: float
    layers: int
    hidden: int
    intermediate: int
    kv_width: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int
    factor: int = 28
    min_pixels: int = 3136
    max_pixels: int = 12845056


QWEN25_VL_7B = ModelShape(parameters=8.292e9, layers=28, hidden=3584, intermediate=18944, kv_width=4 * 128,
                          vocab=152064, vision_layers=32, vision_hidden=1280, vision_intermediate=3420)
"""Qwen2.5-VL-7B-Instruct (config.json of the released model; 8,292,166,656 parameters)."""


def smart_resize(width: int, height: int, shape: ModelShape = QWEN25_VL_7B) -> tuple[int, int]:
    """Qwen2.5-VL's processor size for an image: sides rounded to 28 px, area within [min_pixels, max_pixels]."""
    factor = shape.factor
    w, h = max(factor, round(width / factor) * factor), max(factor, round(height / factor) * factor)
    if w * h > shape.max_pixels:
        beta = math.sqrt(width * height / shape.max_pixels)
        w, h = math.floor(width / beta / factor) * factor, math.floor(height / beta / factor) * factor
    elif w * h < shape.min_pixels:
        beta = math.sqrt(shape.min_pixels / (width * height))
        w, h = math.ceil(width * beta / factor) * factor, math.ceil(height * beta / factor) * factor
    return w, h


def visual_tokens(width: int, height: int, shape: ModelShape = QWEN25_VL_7B) -> int:
    w, h = smart_resize(width, height, shape)
    return (w // shape.factor) * (h // shape.factor)


def largest_visual_tokens(max_pixels: int, shape: ModelShape = QWEN25_VL_7B, max_aspect: int = 200,
                          halve: bool = False) -> int:
    """The most visual tokens an image of at most `max_pixels` pixels gets (`halve`: of its half-size view), over
    widths from square to `max_aspect`:1 (portrait is the same by symmetry)."""
    side = math.isqrt(max_pixels)
    best = 0
    for width in range(side, math.isqrt(max_pixels * max_aspect) + 1):
        height = max_pixels // width
        size = (width // 2, height // 2) if halve else (width, height)
        best = max(best, visual_tokens(*size, shape))
    return best


@dataclass
class MemoryPlan:
    """Per training GPU, in GB (1e9 bytes)."""

    terms: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    sequence_tokens: int = 0
    largest_image_tokens: int = 0
    largest_low_tokens: int = 0

    @property
    def total(self) -> float:
        return sum(self.terms.values())


def memory_plan(config, processes: int, shape: ModelShape = QWEN25_VL_7B, prompt_text_tokens: int = 2048,
                overhead_gb: float = 5.0, live_parameters: float = 1e9) -> MemoryPlan:
    """The worst-case peak of one training GPU for a GRPO `config` (a `VisionThinkGRPOConfig` or anything with its
    fields) on `processes` GPUs under ZeRO-3, bf16: every rollout resizes the largest allowed image, every sequence
    is as long as the recipe allows (`prompt_text_tokens` of prompt text beside the low view)."""
    pixels = config.image_max_pixels or shape.max_pixels
    high = largest_visual_tokens(pixels, shape)
    low = largest_visual_tokens(pixels, shape, halve=True)
    completion = int(config.max_completion_length)
    sequence = prompt_text_tokens + low + completion
    batch = int(config.per_device_train_batch_size)
    buffered = batch * int(config.steps_per_generation or config.gradient_accumulation_steps)
    plan = MemoryPlan(sequence_tokens=sequence, largest_image_tokens=high, largest_low_tokens=low)
    p = shape.parameters
    if config.lora:
        adapters = shape.layers * config.lora_r * (
            2 * (shape.hidden + shape.hidden) + 2 * (shape.hidden + shape.kv_width)
            + 3 * (shape.hidden + shape.intermediate))
        plan.terms["model states"] = (2 * p + 16 * adapters) / processes / GB
        plan.notes["model states"] = "frozen bf16 weights (2 B/param) and the adapters' 16 B/param, sharded"
    else:
        plan.terms["model states"] = 16 * p / processes / GB
        plan.notes["model states"] = ("bf16 weights and gradients, fp32 master weights and two Adam moments: "
                                      "16 B/param, sharded")
        if config.beta:
            plan.terms["reference model"] = 2 * p / processes / GB
            plan.notes["reference model"] = "the KL term's frozen copy in bf16, sharded"
    plan.terms["ZeRO-3 gathered parameters"] = 2 * live_parameters / GB
    plan.notes["ZeRO-3 gathered parameters"] = "stage3_max_live_parameters (1e9) in bf16"
    per_rollout = (low + high) * PATCHES_PER_TOKEN * PATCH_VALUES * 4
    plan.terms["rollout buffer"] = buffered * per_rollout / GB
    plan.notes["rollout buffer"] = (f"{buffered} rollouts (per_device_train_batch_size x steps_per_generation), "
                                    f"float32 pixel_values of a {low}-token low view and a {high}-token resize")
    checkpoints = shape.layers if config.gradient_checkpointing else 0
    layer = (2 * shape.hidden + 2 * shape.kv_width + 3 * shape.intermediate) * 2
    recomputed = 2 * layer * (1 if config.gradient_checkpointing else shape.layers)
    text = batch * sequence * (checkpoints * shape.hidden * 2 + recomputed)
    plan.terms["text activations"] = text / GB
    plan.notes["text activations"] = (f"{sequence} tokens: layer inputs kept by gradient checkpointing, one layer "
                                      "recomputed with its gradients")
    plan.terms["logits"] = 2 * batch * completion * shape.vocab * 2 / GB
    plan.notes["logits"] = "the completion's bf16 logits and their gradient (TRL's fused log-softmax and entropy)"
    patches = batch * PATCHES_PER_TOKEN * (low + high)
    vision_layer = (4 * shape.vision_hidden + 3 * shape.vision_intermediate) * 2
    vision_checkpoints = shape.vision_layers if config.gradient_checkpointing else 0
    vision = patches * (vision_checkpoints * shape.vision_hidden * 2
                        + 2 * vision_layer * (1 if config.gradient_checkpointing else shape.vision_layers))
    plan.terms["vision activations"] = vision / GB
    plan.notes["vision activations"] = f"{patches} patches of both images through the vision tower"
    plan.terms["CUDA context, NCCL, fragmentation"] = overhead_gb
    plan.notes["CUDA context, NCCL, fragmentation"] = "a fixed allowance"
    return plan


def format_plan(plan: MemoryPlan) -> str:
    """A Markdown table of the plan."""
    lines = ["| term | GB | what |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.1f} | {plan.notes.get(name, '')} |" for name, value in plan.terms.items()]
    lines.append(f"| **total** | **{plan.total:.1f}** | |")
    return "\n".join(lines)
