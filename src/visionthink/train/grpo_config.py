"""`VisionThinkGRPOConfig`: `trl.GRPOConfig` plus the VisionThink fields; the recipe section `grpo:`.

Every TRL and `transformers.TrainingArguments` field is a field here under its own name (`max_steps`,
`per_device_train_batch_size`, ...). Some TRL defaults are replaced by the tiny recipe's (marked
"VisionThink default"); the fields TRL does not have come after them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import trl

from visionthink.rewards.rewards import COST_VARIANT, COST_WEIGHT, FORMAT_REWARD, PENALTY, PENALTY_VARIANTS, THETA

GRPO_PENALTY_VARIANTS = (*PENALTY_VARIANTS, COST_VARIANT)
"""`penalty_variant`s GRPO accepts: the paper's and its ablations, and the cost-aware one (`rewards.cost_penalties`,
docs/zoom.md), whose visual-token costs `grpo_rewards` passes on."""

MAX_TOOL_CALLS = 1
"""The protocol allows one resize (two assistant turns)."""


@dataclass
class VisionThinkGRPOConfig(trl.GRPOConfig):
    """Multi-turn GRPO (`visionthink train grpo`): TRL's `GRPOConfig` with the VisionThink fields added."""

    renamed_fields: ClassVar[dict[str, str]] = {
        "steps": "max_steps",
        "per_device_batch_size": "per_device_train_batch_size",
    }
    """Recipe keys of the config before it was a `GRPOConfig`, and their TRL names (for the error message)."""

    # ---------------------------------------------------------------- TRL fields, VisionThink defaults
    output_dir: str | None = field(default="runs/grpo-tiny", metadata={
        "help": "TRL checkpoints (`checkpoint-N`), `log.jsonl`, TensorBoard events and the final model (`final/`)."})
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "Rollouts (not questions) per device per micro-step; a multiple of `num_generations` keeps "
                "groups local."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial learning rate (the paper: 1e-6)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning rate schedule."})
    beta: float = field(default=0.001, metadata={"help": "KL coefficient (the paper: 0.001)."})
    max_completion_length: int | None = field(default=96, metadata={
        "help": "Tokens of the whole multi-turn completion: both assistant turns AND the tool turn with its image."})
    max_tool_calling_iterations: int | None = field(default=MAX_TOOL_CALLS, metadata={
        "help": "Tool calls per rollout: the protocol allows exactly one resize."})
    bf16: bool | None = field(default=False, metadata={"help": "Train in bfloat16 (GPUs)."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "tensorboard, wandb, none (tensorboard falls back to none, with a warning, when it is not "
                "installed)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every this many steps."})
    save_steps: float = field(default=50, metadata={"help": "Save a checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in `output_dir`."})
    seed: int = field(default=0, metadata={"help": "Random seed of the run."})
    data_seed: int | None = field(default=0, metadata={
        "help": "Seed of TRL's sampler and of the synthetic prompt set."})
    vllm_mode: str = field(default="server", metadata={
        "help": "With `use_vllm`: server (rollouts from `trl vllm-serve` on other GPUs) or colocate (vLLM inside "
                "the training processes)."})

    # ---------------------------------------------------------------- VisionThink fields
    model: str = field(default="checkpoints/tiny-synth", metadata={
        "help": "Starting checkpoint (a `save_pretrained` folder): the SFT warm start, or a base VLM."})
    export_dir: str | None = field(default=None, metadata={
        "help": "If set, the final model is also copied here (e.g. the shipped checkpoint)."})
    resume: bool = field(default=True, metadata={
        "help": "Go on from the newest complete checkpoint in `output_dir` when there is one."})
    threads: int = field(default=2, metadata={"help": "CPU threads (torch) when training on CPU."})
    penalty_variant: str = field(default="paper", metadata={
        "help": "Resize penalty: paper (Eq. 5), release, none, flat (see `visionthink.rewards.rewards`), or cost "
                "(region zoom, docs/zoom.md: Eq. 5 with any tool counted as high, plus `cost_weight` x visual tokens "
                "above the group's cheapest approved correct answer)."})
    cost_weight: float = field(default=COST_WEIGHT, metadata={
        "help": "`penalty_variant: cost` only: penalty per full-resolution image's worth of visual tokens above the "
                "group's cheapest approved correct answer; 0 is Eq. 5 alone (the ablation arm)."})
    theta: float = field(default=THETA, metadata={
        "help": "Eq. 5's threshold on the share of correct rollouts that answered at low resolution."})
    penalty: float = field(default=PENALTY, metadata={"help": "Size of the resize penalty."})
    format_reward: float = field(default=FORMAT_REWARD, metadata={"help": "R_format of a well-formed episode."})
    judge: str = field(default="rule", metadata={
        "help": "Judge spec for `make_judge`: rule, http:<base_url>[#model], local:<path>."})
    judge_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "More keyword arguments for the judge (e.g. timeout, retries, concurrency, cache_path)."})
    judge_check: bool = field(default=True, metadata={
        "help": "Ask an HTTP judge one question before training: one that refuses (401/403: the key; 404: the model "
                "name or URL; any other 4xx) or cannot be reached stops the run with the reason, instead of every "
                "verdict falling back to `judge_fallback`."})
    judge_fallback: str = field(default="rule", metadata={
        "help": "What an LLM judge does when it cannot grade: `rule` grades by rule, `drop` scores 0."})
    drop_tied_groups: bool = field(default=True, metadata={
        "help": "Leave groups whose rewards all tie out of the loss (they carry no advantage)."})
    drop_failed_groups: bool = field(default=False, metadata={
        "help": "Leave groups with a rollout the judge failed to grade out of the loss (the release's behaviour)."})
    explore_direct: int = field(default=0, metadata={
        "help": "Probe rollouts per group whose FIRST turn may not call the tool (not in the paper; 0 turns it "
                "off). Once a group always resizes, Eq. 5 sees r = 0 and never learns that low resolution was "
                "enough: the probes keep measuring it. They count in the group's rewards but are left out of the "
                "loss. Needs explore_direct / num_generations >= theta. Transformers generation only (not vLLM)."})
    probe_decoding: str = field(default="sample", metadata={
        "help": "How the `explore_direct` probes pick their tokens: `sample` (the rollout temperature) or "
                "`greedy` (the way the model is evaluated and served)."})
    probe_loss: str = field(default="none", metadata={
        "help": "What the `explore_direct` probes teach: `none` (rewards only) or `positive` (their tokens are "
                "trained where their advantage is positive, never pushed down)."})
    anchor_weight: float = field(default=0.0, metadata={
        "help": "Perception anchor (`visionthink.train.grpo_anchor`, not in the paper): weight of a supervised "
                "loss on ground-truth direct answers at low resolution, `<tool_call>` masked out. 0 turns it off."})
    box_anchor_weight: float = field(default=0.0, metadata={
        "help": "Box anchor (`grpo_anchor.BoxAnchor`, zoom profile only, not in the paper): weight of a supervised "
                "loss on the zoom call's box for the label's true box, on fresh scenes; what precedes `<tool_call>` "
                "carries no loss, so it teaches where to zoom, not whether. 0 turns it off."})
    anchor_batch_size: int = field(default=8, metadata={"help": "Rows drawn per step for each anchor."})
    protocol: str = field(default="visionthink", metadata={
        "help": "Conversation format of the rollouts (`visionthink.profiles`): visionthink, release (the authors' "
                "prompts and chat turns, for training from their checkpoints) or visionthink-zoom (the `zoom_image` "
                "tool as well, docs/zoom.md)."})
    data: str = field(default="synth", metadata={
        "help": "`synth` (the synthetic world's train split), `ladder` (the ladder world's, issue 27) or a "
                "`save_to_disk` folder with "
                "image/question/answer columns, e.g. the output of `visionthink data curate` (its `train` split)."})
    image_min_pixels: int | None = field(default=None, metadata={
        "help": "Training images with fewer pixels are scaled up to about this many before their views are made "
                "(`images.clamp_to_pixel_range`; the release's 512^2 = 262144). None: as they are."})
    image_max_pixels: int | None = field(default=None, metadata={
        "help": "Training images with more pixels are scaled down to about this many before their views are made "
                "(the release's 2048^2 = 4194304). None: only the processor's own cap."})
    train_items: int = field(default=4000, metadata={
        "help": "Items of the synthetic train split to draw prompts from (with `data: synth`)."})
    frame_fraction: float = field(default=0.0, metadata={
        "help": "With a generated world: the share of prompts whose question is asked inside a training frame "
                "(`synth.TRAIN_FRAMES`, e.g. \"Quick question: ...\"), as SFT's `frame_fraction`."})
    crossed_wording_fraction: float = field(default=0.0, metadata={
        "help": "With the ladder world: the share of label prompts asked in the other label family's wording "
                "(`synth.CROSSED_WORDINGS`; the answer stays the scene's), as SFT's: the cheapest right action "
                "must follow the image, not the words."})
    paired_wording_fraction: float = field(default=0.0, metadata={
        "help": "With the ladder world: the share of label prompts asked in the other label family's sentence forms "
                "with their own number (`synth.paired_wordings`), as SFT's."})
    carrier_wording_fraction: float = field(default=0.0, metadata={
        "help": "With the ladder world: the share of prompts (of those not paired) asked in a carrier sentence form "
                "around the question's noun phrase (`synth.carrier_wordings`), as SFT's."})
    noise_word_fraction: float = field(default=0.0, metadata={
        "help": "With a generated world: the share of prompts whose question gets one or two nonsense words "
                "(`synth.noise_wording`), as SFT's."})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of every weight."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        metadata={"help": "A regex over module names (peft): by default the language model's linear layers, not "
                          "the vision tower."})

    def __post_init__(self) -> None:
        self._check_visionthink_fields()
        if self.report_to == "tensorboard" and not _tensorboard_available():
            warnings.warn("tensorboard is not installed: logging to log.jsonl only (pip install tensorboard)",
                          stacklevel=2)
            self.report_to = "none"
        if not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()

    def _check_visionthink_fields(self) -> None:
        from visionthink.profiles import get_profile

        get_profile(self.protocol)  # an unknown name fails here, before any model is loaded
        if self.penalty_variant not in GRPO_PENALTY_VARIANTS:
            raise ValueError(f"penalty_variant must be one of {GRPO_PENALTY_VARIANTS}, got {self.penalty_variant!r}")
        if not (math.isfinite(self.cost_weight) and self.cost_weight >= 0):
            raise ValueError(f"cost_weight must be a finite number >= 0, got {self.cost_weight}")
        if not 0 <= self.explore_direct <= (self.num_generations or 0):
            raise ValueError(f"explore_direct must be between 0 and num_generations ({self.num_generations})")
        if self.probe_decoding not in ("sample", "greedy"):
            raise ValueError(f"probe_decoding must be sample or greedy, got {self.probe_decoding!r}")
        if self.probe_loss not in ("none", "positive"):
            raise ValueError(f"probe_loss must be none or positive, got {self.probe_loss!r}")
        if self.explore_direct and self.use_vllm:
            raise ValueError("explore_direct needs transformers generation (use_vllm: false)")
        if (self.image_min_pixels is None) != (self.image_max_pixels is None):
            raise ValueError("image_min_pixels and image_max_pixels go together (both set, or neither)")
        if self.image_min_pixels is not None and not 0 < self.image_min_pixels <= self.image_max_pixels:
            raise ValueError(f"need 0 < image_min_pixels <= image_max_pixels, got {self.image_min_pixels}, "
                             f"{self.image_max_pixels}")
        if self.max_tool_calling_iterations != MAX_TOOL_CALLS:
            raise ValueError(f"max_tool_calling_iterations must be {MAX_TOOL_CALLS}: the protocol allows one resize")


def pixel_range(config: VisionThinkGRPOConfig) -> tuple[int, int] | None:
    """The (min, max) pixels training images are scaled into, or None."""
    if config.image_min_pixels is None or config.image_max_pixels is None:
        return None
    return config.image_min_pixels, config.image_max_pixels


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
