"""`recipes/qwen2.5-vl-7b.yaml` keeps its promises: the release's pixel range, a completion budget with room for a
resize of the largest allowed image under the rollout server's context, a memory plan that fits 8 x 80 GB, a named
judge checked at start-up, and rollouts that cannot write image or vision special tokens.

Visual tokens are computed here from Qwen2.5-VL's smart-resize rule, written out again (not taken from the code under
test). Token counts of text are bounded by its length in characters (no token is shorter than one character).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import qwen_smart_resize as smart_resize  # tests/ is on sys.path

from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS
from visionthink.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "qwen2.5-vl-7b.yaml"
ZERO3 = ROOT / "recipes" / "accelerate" / "zero3.yaml"
GPU_GB = 80
TEXT_ROOM = 4096
"""Tokens the two assistant turns must still have beside the largest tool turn."""
QUESTION_CHARS = 512
"""The longest question the prompt bound allows for."""
TEMPLATE_TOKENS = 16
"""`<|im_start|>`, role names, `<|im_end|>`, the vision markers and newlines around a turn (fewer than this)."""


def most_tokens(max_pixels: int, halve: bool = False) -> int:
    """The most visual tokens of an image of at most `max_pixels` (or of its half-size view), aspect up to 200:1."""
    best = 0
    for width in range(math.isqrt(max_pixels), math.isqrt(max_pixels * 200) + 1):
        height = max_pixels // width
        w, h = smart_resize(*((width // 2, height // 2) if halve else (width, height)))
        best = max(best, (w // 28) * (h // 28))
    return best


@pytest.fixture(scope="module")
def config():
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    return load_recipe(RECIPE, "grpo", VisionThinkGRPOConfig)


@pytest.fixture(scope="module")
def processes() -> int:
    accelerate = yaml.safe_load(ZERO3.read_text())
    assert accelerate["distributed_type"] == "DEEPSPEED" and accelerate["deepspeed_config"]["zero_stage"] == 3
    assert accelerate["mixed_precision"] == "bf16"
    header = RECIPE.read_text()
    assert f"--num_processes {accelerate['num_processes']} " in header
    return int(accelerate["num_processes"])


def test_images_are_scaled_into_the_release_pixel_range(config):
    assert (config.image_min_pixels, config.image_max_pixels) == (RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS)
    assert "--pixel-range release" in RECIPE.read_text()  # curation sees the images training sees


def test_completion_budget_has_room_for_the_largest_resize_under_the_server_context(config):
    from visionthink.profiles import RELEASE, VISIONTHINK

    largest = most_tokens(config.image_max_pixels)
    low = max(most_tokens(config.image_max_pixels, halve=True), math.ceil(largest / 4))
    assert largest == 5838 and low == 1551
    served = re.search(r"--max-model-len (\d+)", RECIPE.read_text())
    assert served and int(served.group(1)) == config.vllm_max_model_length
    from PIL import Image

    image = Image.new("RGB", (28, 28))
    for profile in (VISIONTHINK, RELEASE):
        reply = profile.tool_turn(profile.tool("resize_image"), image)
        tool_chars = sum(len(part.get("text", "")) for part in reply["content"])
        tool_turn = largest + tool_chars + TEMPLATE_TOKENS
        assert config.max_completion_length - tool_turn >= TEXT_ROOM, profile.name
        first = profile.first_turn("", image)
        prompt_chars = sum(len(part) if isinstance(part, str) else len(part.get("text", ""))
                           for message in first for part in _parts(message["content"]))
        prompt = prompt_chars + QUESTION_CHARS + TEMPLATE_TOKENS + low
        assert prompt + config.max_completion_length <= config.vllm_max_model_length, profile.name


def _parts(content):
    return content if isinstance(content, list) else [content]


def test_memory_plan_fits_and_the_docs_give_its_totals(config, processes):
    from visionthink.train.grpo_memory import memory_plan

    assert config.per_device_train_batch_size == 1 and config.gradient_checkpointing and config.bf16
    assert config.steps_per_generation == config.gradient_accumulation_steps == 64
    generation = config.per_device_train_batch_size * processes * config.steps_per_generation
    assert generation % config.num_generations == 0  # whole groups in every rollout batch
    plan = memory_plan(config, processes)
    assert plan.sequence_tokens <= config.vllm_max_model_length
    assert plan.total <= 0.9 * GPU_GB, plan.terms
    assert plan.terms["rollout buffer"] < 10 and plan.terms["logits"] < 10
    docs = (ROOT / "docs" / "real-models.md").read_text()
    assert f"**{plan.total:.1f}**" in docs  # the memory plan's table in the docs is this recipe's
    lora = memory_plan(_With(config, lora=True), processes)
    assert lora.total < plan.total and f"{lora.total:.1f}" in docs
    for field in ("per_device_train_batch_size", "steps_per_generation", "max_completion_length"):
        assert f"`{field}: {getattr(config, field)}`" in docs, field


def test_the_old_recipe_numbers_would_not_fit(config, processes):
    """8 x 144 rollouts buffered per GPU and 16K-token completions: several times an 80 GB GPU."""
    from visionthink.train.grpo_memory import memory_plan

    old = _With(config, per_device_train_batch_size=8, steps_per_generation=144, gradient_accumulation_steps=9,
                max_completion_length=16384)
    assert memory_plan(old, processes).total > 3 * GPU_GB


def test_the_judge_is_named_and_checked(config):
    from visionthink.rewards.judges import make_judge

    assert config.judge_check
    judge = make_judge(config.judge, fallback=config.judge_fallback)
    assert judge.name == "http" and judge.model == "judge"
    assert "--served-model-name judge" in RECIPE.read_text()


def test_rollouts_ban_image_and_vision_tokens_on_both_generation_paths(config, shipped_model_dir):
    from visionthink.engines.base import never_write_ids
    from visionthink.models.loading import load_processor
    from visionthink.train.grpo import BAN_BIAS, rollout_generation_kwargs

    tokenizer = load_processor(shipped_model_dir).tokenizer
    vision = [tokenizer.convert_tokens_to_ids(t) for t in (
        "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")]
    banned = never_write_ids(tokenizer)
    assert set(vision) <= set(banned)
    assert config.use_vllm
    vllm = rollout_generation_kwargs(config, banned)
    assert all(vllm["logit_bias"][token] == BAN_BIAS for token in vision) and "suppress_tokens" not in vllm
    kept = rollout_generation_kwargs(_With(config, generation_kwargs={"logit_bias": {"5": 2.0}}), banned)
    assert kept["logit_bias"][5] == 2.0 and kept["logit_bias"][vision[0]] == BAN_BIAS
    local = rollout_generation_kwargs(_With(config, use_vllm=False), banned)
    assert set(vision) <= set(local["suppress_tokens"]) and "logit_bias" not in local


class _With:
    """`config` with some fields replaced (a GRPOConfig cannot be copied without re-running its checks)."""

    def __init__(self, config, **fields):
        self._config, self._fields = config, fields

    def __getattr__(self, name):
        return self._fields[name] if name in self._fields else getattr(self._config, name)
