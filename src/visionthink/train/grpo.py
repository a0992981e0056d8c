"""Multi-turn GRPO on TRL's `GRPOTrainer`: the resize decision, learned from R = R_acc + R_format - P_control.

TRL does the rollouts (its tool loop runs the tools of `grpo_env.environment_for(profile)`, at most once),
the masking (tool turns and image tokens are out of the loss via TRL's `tool_mask`), the GRPO loss, the
checkpoints and the logs. This module puts the parts together: the config (`grpo_config`), the reward
(`grpo_rewards`), the trainer subclass (`grpo_trainer`), then trains and writes the run's summary and plot
(`grpo_plots`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from visionthink.data import synth
from visionthink.profiles import declare_profile, get_profile
from visionthink.rewards.judges import make_judge
from visionthink.train import grpo_env, newest_checkpoint
from visionthink.train.grpo_config import VisionThinkGRPOConfig, pixel_range
from visionthink.train.grpo_plots import plot_resize_ratio
from visionthink.train.grpo_rewards import VisionThinkRewards
from visionthink.train.grpo_trainer import VisionThinkGRPOTrainer


class JsonlLog(TrainerCallback):
    """Every log record as a JSON line (the log that works without TensorBoard)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def build_trainer(config: VisionThinkGRPOConfig, model=None, processor=None,
                  train_dataset=None) -> VisionThinkGRPOTrainer:
    """The configured trainer (model, processor and data loaded from the config unless given)."""
    from visionthink.engines.transformers_engine import never_write_ids
    from visionthink.models import load_model

    if not torch.cuda.is_available():
        torch.set_num_threads(config.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    judge = start_judge(config)  # before the model: a judge that refuses stops the run at once
    if model is None or processor is None:
        model, processor = load_model(config.model, dtype=torch.bfloat16 if config.bf16 else torch.float32)
    model.train()
    profile = get_profile(config.protocol)
    if profile.chat_template is not None:  # TRL renders with the processor's template
        processor.chat_template = profile.chat_template
        processor.tokenizer.chat_template = profile.chat_template
    _set_response_template(processor)
    pixels = pixel_range(config)
    if train_dataset is None and config.data in synth.WORLDS:
        train_dataset = grpo_env.prompt_dataset(processor.grid, config.train_items, seed=config.data_seed,
                                                protocol=profile, pixel_range=pixels, world=config.data,
                                                frame_fraction=config.frame_fraction,
                                                crossed_wording_fraction=config.crossed_wording_fraction,
                                                paired_wording_fraction=config.paired_wording_fraction,
                                                carrier_wording_fraction=config.carrier_wording_fraction,
                                                noise_word_fraction=config.noise_word_fraction)
    elif train_dataset is None:
        train_dataset = grpo_env.disk_dataset(config.data, processor.grid, protocol=profile, pixel_range=pixels)
    rewards = VisionThinkRewards(
        processor, judge, config.num_generations,
        variant=config.penalty_variant, theta=config.theta, penalty=config.penalty,
        format_value=config.format_reward, drop_tied=config.drop_tied_groups, drop_failed=config.drop_failed_groups,
        protocol=profile, cost_weight=config.cost_weight,
    )
    environment = grpo_env.environment_for(profile, processor.grid)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
    config.generation_kwargs = rollout_generation_kwargs(config, never_write_ids(processor.tokenizer))
    anchors = None
    if config.anchor_weight > 0 or config.box_anchor_weight > 0:
        from accelerate import PartialState

        from visionthink.train.grpo_anchor import Anchors, AnswerAnchor, BoxAnchor

        seed = config.seed + PartialState().process_index
        named = {}
        if config.anchor_weight > 0:
            named["anchor"] = AnswerAnchor(train_dataset, processor, config.anchor_weight, config.anchor_batch_size,
                                           seed=seed)
        if config.box_anchor_weight > 0:
            if not profile.offers("zoom_image"):
                raise ValueError("box_anchor_weight needs a protocol with zoom_image (visionthink-zoom)")
            named["box_anchor"] = BoxAnchor(processor, config.box_anchor_weight, config.anchor_batch_size, seed=seed)
        anchors = Anchors(named)
    trainer = VisionThinkGRPOTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        processing_class=processor,
        environment_factory=environment,
        peft_config=peft_config,
        rewards=rewards,
        anchors=anchors,
        explore_direct=config.explore_direct,
        probe_loss=config.probe_loss,
        probe_decoding=config.probe_decoding,
    )
    grpo_env.use_profile_tools(trainer, environment)  # a zoom_image schema says more than a signature can
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.add_callback(JsonlLog(output_dir / "log.jsonl"))
    return trainer


BAN_BIAS = -100.0
"""The `logit_bias` that keeps a token out of vLLM rollouts (the OpenAI API's lowest)."""


def rollout_generation_kwargs(config: VisionThinkGRPOConfig, banned: list[int]) -> dict[str, Any]:
    """`config.generation_kwargs` with the `banned` ids (image and vision special tokens, `<|im_start|>`:
    `engines.base.never_write_ids`) kept out of every rollout: `suppress_tokens` for transformers generation,
    `logit_bias` for vLLM (TRL merges `generation_kwargs` into its `SamplingParams`, in colocate mode and in the
    requests to `trl vllm-serve`). One sampled image token would make TRL drop the images of its whole micro-batch."""
    kwargs = dict(config.generation_kwargs or {})
    if config.use_vllm:
        bias = {int(token): float(value) for token, value in (kwargs.get("logit_bias") or {}).items()}
        kwargs["logit_bias"] = {**bias, **{int(token): BAN_BIAS for token in banned}}
    else:
        kwargs["suppress_tokens"] = sorted({*(kwargs.get("suppress_tokens") or []), *banned})
    return kwargs


def start_judge(config: VisionThinkGRPOConfig):
    """The run's judge (`make_judge(config.judge)`); an HTTP judge is asked one question first (`judge_check`),
    so that one that refuses or is not there stops the run with the reason (`http_judge.JudgeUnavailable`)."""
    from visionthink.rewards.http_judge import HTTPJudge

    judge = make_judge(config.judge, **_judge_kwargs(config))
    if config.judge_check and isinstance(judge, HTTPJudge):
        judge.check()
    return judge


def _judge_kwargs(config: VisionThinkGRPOConfig) -> dict[str, Any]:
    if config.judge.strip() == "rule":
        return dict(config.judge_options)
    return {"fallback": config.judge_fallback, **config.judge_options}


def _set_response_template(processor) -> None:
    """Let TRL parse `<tool_call>` JSON out of completions: our template renders Qwen's tool-call format,
    which TRL's Qwen3 response template parses (TRL only sets it itself for templates it recognises)."""
    from trl.chat_template_utils import _SUPPORTS_RESPONSE_TEMPLATE, qwen3_schema, qwen3_template

    tokenizer = processor.tokenizer
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        if _SUPPORTS_RESPONSE_TEMPLATE:
            tokenizer.response_template = qwen3_template
        else:
            tokenizer.response_schema = qwen3_schema


def train_grpo(config: VisionThinkGRPOConfig, model=None, processor=None, train_dataset=None) -> Path:
    """Run (or resume) GRPO; returns the folder of the final model."""
    from transformers.trainer import TRAINER_STATE_NAME, TrainerState

    trainer = build_trainer(config, model, processor, train_dataset)
    output_dir = Path(config.output_dir)
    (output_dir / "recipe.json").write_text(config.to_json_string())
    resume = newest_checkpoint(output_dir, TRAINER_STATE_NAME) if config.resume else None
    state = TrainerState.load_from_json(str(resume / TRAINER_STATE_NAME)) if resume else None
    if state is not None and 0 < trainer.args.max_steps <= state.global_step:
        # the run ended there: transformers' Trainer, resumed at exactly max_steps, trains one step more
        trainer._load_from_checkpoint(str(resume))
        trainer.state = state
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = output_dir / "final"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True  # TRL turns it off for training
    trainer.save_model(str(final / "adapter") if config.lora else str(final))
    if trainer.accelerator.is_main_process:
        if config.lora and not trainer.is_deepspeed_enabled:  # a plain model folder, loadable everywhere
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(str(final))
        trainer.processing_class.save_pretrained(str(final))
        declare_profile(final, config.protocol)
        _write_summary(output_dir, trainer)
        if config.export_dir:
            export = Path(config.export_dir)
            shutil.rmtree(export, ignore_errors=True)
            shutil.copytree(final, export, ignore=shutil.ignore_patterns("training_args.bin"))
    return final


def _write_summary(output_dir: Path, trainer) -> None:
    """`summary.json` with the last logged values (resize ratio per family and the reward components)."""
    last: dict[str, Any] = {}
    for record in trainer.state.log_history:
        last.update(record)
    families = {f"resize_ratio/{name}": last.get(f"resize_ratio/{name}") for name in synth.LADDER_FAMILIES}
    (output_dir / "summary.json").write_text(json.dumps({"last": last, "families": families}, indent=2))
    plot_resize_ratio(trainer.state.log_history, output_dir / "resize_ratio.png")
