"""Multi-turn GRPO on TRL's `GRPOTrainer`: the resize decision, learned from R = R_acc + R_format - P_control.

TRL does the rollouts (its tool loop runs `grpo_env.ResizeEnvironment.resize_image`, at most once),
the masking (tool turns and image tokens are out of the loss via TRL's `tool_mask`), the GRPO loss, the
checkpoints and the logs. This module adds, without copying TRL:

- `GRPORecipe`: the recipe section `grpo:`, mapped onto `trl.GRPOConfig` by `trl_config`;
- `VisionThinkRewards`: three TRL reward functions (`accuracy`, `format`, `resize_penalty`, weight 1 each,
  the last one negative) computed together once per batch from `protocol.Episode`s, with per-family logs;
- `VisionThinkGRPOTrainer`: drops groups whose rewards all tie (and, optionally, groups the judge failed)
  from the loss, by zeroing their rows of TRL's `tool_mask` after TRL scored the batch.

Groups: TRL's sampler puts the `num_generations` rollouts of a prompt next to each other in the global
batch, which is split across processes in order, so rollout k of process p is global row
``p * local + k`` and its group is ``row // num_generations``. The penalty and the tie filter gather
(`accelerate.utils.gather_object`) what they need from every process, so a group may span processes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionthink.data import synth
from visionthink.protocol import Episode
from visionthink.recipes import to_dict
from visionthink.rewards.judges import make_judge
from visionthink.rewards.rewards import (
    FORMAT_REWARD,
    PENALTY,
    PENALTY_VARIANTS,
    THETA,
    failed_groups,
    format_rewards,
    judge_verdicts,
    tied_groups,
    total_rewards,
)
from visionthink.train import grpo_env, newest_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class GRPORecipe:
    """Multi-turn GRPO (`visionthink train grpo`); the recipe section `grpo:`."""

    model: str = "checkpoints/tiny-synth"
    """Starting checkpoint (a `save_pretrained` folder): the SFT warm start, or a base VLM."""
    output_dir: str = "runs/grpo-tiny"
    """TRL checkpoints (`checkpoint-N`), `log.jsonl`, TensorBoard events and the final model (`final/`)."""
    export_dir: str | None = None
    """If set, the final model is also copied here (e.g. the shipped checkpoint)."""
    steps: int = 300
    """Optimizer steps (TRL `max_steps`)."""
    num_generations: int = 8
    """Rollouts per question: the GRPO group (the paper: 16)."""
    per_device_batch_size: int = 8
    """Rollouts (not questions) per device per micro-step; a multiple of `num_generations` keeps groups local."""
    gradient_accumulation_steps: int = 1
    steps_per_generation: int | None = None
    """Micro-steps per generation batch (TRL's default: `gradient_accumulation_steps`)."""
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.001
    """KL coefficient (the paper: 0.001)."""
    epsilon: float = 0.2
    """PPO clip range."""
    entropy_coef: float = 0.0
    """Entropy bonus (the paper: 0.001)."""
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_completion_length: int = 96
    """Tokens of the whole multi-turn completion: both assistant turns AND the tool turn with its image."""
    mask_truncated_completions: bool = False
    penalty_variant: str = "paper"
    """Resize penalty: paper (Eq. 5), release, none, flat (see `visionthink.rewards.rewards`)."""
    theta: float = THETA
    penalty: float = PENALTY
    format_reward: float = FORMAT_REWARD
    judge: str = "rule"
    """Judge spec for `make_judge`: rule, http:<base_url>[#model], local:<path>."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    """More keyword arguments for the judge (e.g. timeout, retries, concurrency, cache_path)."""
    judge_fallback: str = "rule"
    """What an LLM judge does when it cannot grade: `rule` grades by rule, `drop` scores 0."""
    drop_tied_groups: bool = True
    """Leave groups whose rewards all tie out of the loss (they carry no advantage)."""
    drop_failed_groups: bool = False
    """Leave groups with a rollout the judge failed to grade out of the loss (the release's behaviour)."""
    explore_direct: int = 0
    """Probe rollouts per group whose FIRST turn may not call the tool (not in the paper; 0 turns it off).
    Once a question's group always resizes, Eq. 5 sees r = 0 and never learns that low resolution was
    enough: the probes keep measuring it. They count in the group's rewards (r, mean, std) but are left out
    of the loss (off-policy samples: their pushed-down answers blew up the KL). Needs explore_direct /
    num_generations >= theta to lift r over theta. Transformers generation only (not vLLM)."""
    probe_decoding: str = "sample"
    """How the `explore_direct` probes pick their tokens: `sample` (the rollout temperature) or `greedy` (the
    way the model is evaluated and served). Greedy probes ask "would my best low-res answer be right?";
    sampled ones also charge low resolution for the spread of the reading at temperature 1, so a question
    read right at arg-max but hedged when sampled keeps paying to resize."""
    probe_loss: str = "none"
    """What the `explore_direct` probes teach: `none` (rewards only) or `positive` (their tokens are trained
    where their advantage is positive, never pushed down)."""
    anchor_weight: float = 0.0
    """Perception anchor (`visionthink.train.grpo_anchor`, not in the paper): weight of a supervised loss on
    ground-truth direct answers at low resolution, `<tool_call>` masked out. 0 turns it off."""
    anchor_batch_size: int = 8
    """Training rows drawn per step for the anchor."""
    data: str = "synth"
    """`synth` (the synthetic world's train split) or a `save_to_disk` folder with image/question/answer
    columns, e.g. the output of `visionthink data curate` (its `train` split is used)."""
    train_items: int = 4000
    """Items of the synthetic train split to draw prompts from (with `data: synth`)."""
    data_seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 0
    report_to: str = "tensorboard"
    """tensorboard, wandb, none (falls back to none, with a warning, when tensorboard is not installed)."""
    threads: int = 2
    """CPU threads (torch) when training on CPU."""
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "server"
    """server: rollouts from `trl vllm-serve` on other GPUs; colocate: vLLM inside the training processes."""
    vllm_server_base_url: str | None = None
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    vllm_gpu_memory_utilization: float = 0.3
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    """A regex over module names (peft): by default the language model's linear layers, not the vision tower."""
    log_completions: bool = False
    resume: bool = True
    """Go on from the newest checkpoint in `output_dir` when there is one."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Any other `trl.GRPOConfig` field, passed as is."""


MAX_TOOL_CALLS = 1
"""The protocol allows one resize (two assistant turns)."""


def trl_config(recipe: GRPORecipe):
    """The `trl.GRPOConfig` for a recipe."""
    from trl import GRPOConfig

    if recipe.penalty_variant not in PENALTY_VARIANTS:
        raise ValueError(f"penalty_variant must be one of {PENALTY_VARIANTS}, got {recipe.penalty_variant!r}")
    if not 0 <= recipe.explore_direct <= recipe.num_generations:
        raise ValueError(f"explore_direct must be between 0 and num_generations ({recipe.num_generations})")
    if recipe.probe_decoding not in ("sample", "greedy"):
        raise ValueError(f"probe_decoding must be sample or greedy, got {recipe.probe_decoding!r}")
    if recipe.probe_loss not in ("none", "positive"):
        raise ValueError(f"probe_loss must be none or positive, got {recipe.probe_loss!r}")
    if recipe.explore_direct and recipe.use_vllm:
        raise ValueError("explore_direct needs transformers generation (use_vllm: false)")
    report_to = recipe.report_to
    if report_to == "tensorboard" and not _tensorboard_available():
        warnings.warn("tensorboard is not installed: logging to log.jsonl only (pip install tensorboard)",
                      stacklevel=2)
        report_to = "none"
    vllm: dict[str, Any] = {}
    if recipe.use_vllm:
        vllm = {
            "use_vllm": True, "vllm_mode": recipe.vllm_mode, "vllm_server_host": recipe.vllm_server_host,
            "vllm_server_port": recipe.vllm_server_port, "vllm_server_base_url": recipe.vllm_server_base_url,
            "vllm_gpu_memory_utilization": recipe.vllm_gpu_memory_utilization,
        }
    return GRPOConfig(
        output_dir=recipe.output_dir,
        max_steps=recipe.steps,
        num_generations=recipe.num_generations,
        per_device_train_batch_size=recipe.per_device_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        steps_per_generation=recipe.steps_per_generation,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        beta=recipe.beta,
        epsilon=recipe.epsilon,
        entropy_coef=recipe.entropy_coef,
        loss_type=recipe.loss_type,
        scale_rewards=recipe.scale_rewards,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        top_k=recipe.top_k,
        max_completion_length=recipe.max_completion_length,
        mask_truncated_completions=recipe.mask_truncated_completions,
        max_tool_calling_iterations=MAX_TOOL_CALLS,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        seed=recipe.seed,
        data_seed=recipe.data_seed,
        report_to=report_to,
        bf16=recipe.bf16,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=recipe.log_completions,
        **vllm,
        **({"gradient_checkpointing": True} if recipe.gradient_checkpointing else {}),
        **recipe.trl,
    )


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- rewards


@dataclass
class Scored:
    """The rewards of one batch (this process's rows), computed once for the three reward functions."""

    ids_ref: Any
    episodes: list[Episode]
    accuracy: list[float]
    format: list[float]
    penalty: list[float]
    keep: list[bool]
    """False for rows of groups left out of the loss (tied, or failed by the judge when so configured)."""


class VisionThinkRewards:
    """The VisionThink reward as three TRL reward functions: `accuracy`, `format`, `resize_penalty`.

    TRL calls each with the same batch; the first call scores the batch (episodes, judge, format, the
    group penalty across processes, the tie filter) and the others read the result. Use the bound
    methods as `reward_funcs` (weights 1): R = accuracy + format + resize_penalty, the last one <= 0.
    """

    def __init__(self, processor, judge, num_generations: int, variant: str = "paper", theta: float = THETA,
                 penalty: float = PENALTY, format_value: float = FORMAT_REWARD, drop_tied: bool = True,
                 drop_failed: bool = False):
        if variant not in PENALTY_VARIANTS:
            raise ValueError(f"variant must be one of {PENALTY_VARIANTS}, got {variant!r}")
        self.processor = processor
        self.judge = judge
        self.num_generations = num_generations
        self.variant = variant
        self.theta = theta
        self.penalty = penalty
        self.format_value = format_value
        self.drop_tied = drop_tied
        self.drop_failed = drop_failed
        self.last: Scored | None = None
        self.history: list[dict[str, float]] = []
        """Per batch: the metrics logged (kept for tests and the run summary)."""

    # TRL names reward functions after `__name__`: these three names are the logged components.
    def accuracy(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        """R_acc: the judge's 0/1 grade of the final `<answer>`."""
        return self._score(prompts, completions, completion_ids, **kwargs).accuracy

    def format(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        """R_format: 0.5 when every turn of the episode is well formed (PAPER.md section 3)."""
        return self._score(prompts, completions, completion_ids, **kwargs).format

    def resize_penalty(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        """-P_control: the group resize penalty (variant `paper`, `release`, `none` or `flat`)."""
        return [-p for p in self._score(prompts, completions, completion_ids, **kwargs).penalty]

    def take_keep(self, n: int) -> list[bool] | None:
        """The last batch's keep mask (once), if it has `n` rows."""
        scored, self.last = self.last, None
        if scored is None or len(scored.keep) != n:
            return None
        return scored.keep

    def _score(self, prompts, completions, completion_ids, question, answer, family=None, uid=None,
               high_res_image=None, log_metric=None, **_: Any) -> Scored:
        if self.last is not None and self.last.ids_ref is completion_ids:
            return self.last
        from accelerate import PartialState
        from accelerate.utils import gather_object

        n = len(completion_ids)
        family = family or ["all"] * n
        uid = uid or [f"{q}\x00{a}" for q, a in zip(question, answer, strict=True)]  # rows without a `uid` column
        highs = high_res_image or [None] * n
        episodes = [
            grpo_env.rollout_episode(self.processor, prompt, completion, ids, high)
            for prompt, completion, ids, high in zip(prompts, completions, completion_ids, highs, strict=True)
        ]
        verdicts = judge_verdicts(episodes, answer, question, self.judge)
        local = [
            {"score": float(v.score), "ok": v.ok, "resized": e.resized, "uid": u}
            for v, e, u in zip(verdicts, episodes, uid, strict=True)
        ]
        fmt = format_rewards(episodes, self.format_value)
        for row, f in zip(local, fmt, strict=True):
            row["format"] = f
        state = PartialState()
        everything = gather_object(local) if state.num_processes > 1 else local
        combined = combine_groups(everything, state.process_index, n, self.num_generations, self.variant,
                                  self.theta, self.penalty, self.drop_tied, self.drop_failed)
        scored = Scored(ids_ref=completion_ids, episodes=episodes, **combined["local"])
        metrics = _metrics(episodes, scored, family, verdicts)
        metrics.update(combined["metrics"])
        self.history.append(metrics)
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(name, value)
        self.last = scored
        return scored


def combine_groups(everything: list[dict[str, Any]], process_index: int, n: int, num_generations: int,
                   variant: str = "paper", theta: float = THETA, penalty: float = PENALTY, drop_tied: bool = True,
                   drop_failed: bool = False) -> dict[str, Any]:
    """Rewards of this process's `n` rows from the rows of every process (in process order).

    Each row: ``score`` (R_acc), ``format``, ``resized``, ``ok`` (the judge graded) and ``uid``. Global row
    i is in group ``i // num_generations`` (TRL's grouping); the penalty and the tie filter see whole groups.
    Returns ``local`` (accuracy, format, penalty, keep for rows ``process_index * n`` onwards) and ``metrics``.
    """
    groups = [row_index // num_generations for row_index in range(len(everything))]
    _check_groups(everything, groups)
    parts = total_rewards(
        [r["score"] for r in everything], [r["format"] for r in everything], [r["resized"] for r in everything],
        groups, variant=variant, theta=theta, penalty=penalty,
    )
    tied = tied_groups(parts.total, groups)
    failed = failed_groups([r["ok"] for r in everything], groups)
    dropped = (tied if drop_tied else set()) | (failed if drop_failed else set())
    mine = slice(process_index * n, (process_index + 1) * n)
    return {
        "local": {
            "accuracy": parts.accuracy[mine],
            "format": parts.format[mine],
            "penalty": parts.penalty[mine],
            "keep": [g not in dropped for g in groups[mine]],
        },
        "metrics": {
            "groups/dropped": float(len(dropped)),
            "groups/tied_share": len(tied) / max(1, len(set(groups))),
            "groups/judge_failed": float(len(failed)),
        },
    }


def _check_groups(rows: list[dict[str, Any]], groups: list[int]) -> None:
    """Every group must hold rollouts of one question (TRL's sampler guarantees it; check anyway)."""
    seen: dict[int, Any] = {}
    for row, group in zip(rows, groups, strict=True):
        if seen.setdefault(group, row["uid"]) != row["uid"]:
            raise RuntimeError(f"rollout group {group} mixes questions {seen[group]!r} and {row['uid']!r}; "
                               "per-device batch and generation batch must keep TRL's grouping")


def _metrics(episodes: list[Episode], scored: Scored, family: list[str], verdicts) -> dict[str, float]:
    """This process's batch in numbers: resize ratio (all and per family), accuracy per family, tokens."""
    n = max(1, len(episodes))
    metrics = {
        "resize_ratio": sum(e.resized for e in episodes) / n,
        "well_formed": sum(e.well_formed for e in episodes) / n,
        "visual_tokens/mean": sum(e.visual_tokens for e in episodes) / n,
        "visual_tokens/share_of_full": sum(e.visual_tokens / max(1, e.full_res_visual_tokens) for e in episodes) / n,
        "judge/failures": float(sum(not v.ok for v in verdicts)),
        "rows/kept": sum(scored.keep) / n,
    }
    for name in sorted(set(family)):
        rows = [i for i, f in enumerate(family) if f == name]
        metrics[f"resize_ratio/{name}"] = sum(episodes[i].resized for i in rows) / len(rows)
        metrics[f"accuracy/{name}"] = sum(scored.accuracy[i] for i in rows) / len(rows)
    return metrics


# ---------------------------------------------------------------- trainer


def _trainer_class():
    from trl import GRPOTrainer

    class VisionThinkGRPOTrainer(GRPOTrainer):
        """`GRPOTrainer` that leaves tied (and optionally judge-failed) groups out of the loss.

        TRL keeps every group; a tied group has zero advantage but still counts in the KL term and the
        loss normaliser. After TRL scores the batch, their rows of `tool_mask` (TRL's loss mask for
        multi-turn completions) are zeroed and `num_items_in_batch` is recounted. The batch is not
        re-sampled, so a step can have fewer (or no) rows that learn.
        """

        def __init__(self, *args, vt_rewards: VisionThinkRewards, vt_anchor=None, vt_explore_direct: int = 0,
                     vt_probe_loss: str = "none", vt_probe_decoding: str = "sample", **kwargs):
            super().__init__(*args, **kwargs)
            self.vt_rewards = vt_rewards
            self.vt_anchor = vt_anchor
            """`grpo_anchor.AnswerAnchor` or None: its loss is added to every training micro-step's."""
            self.vt_explore_direct = vt_explore_direct
            self.vt_probe_loss = vt_probe_loss
            self.vt_probe_decoding = vt_probe_decoding
            self.vt_images_in_loss: list[int] = []
            """Images per batch in the loss pass (prompt images plus those the tool returned)."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.model.training:
                grid = output.get("image_grid_thw")
                self.vt_images_in_loss.append(0 if grid is None else int(grid.shape[0]))
                rows_here = output["completion_ids"].shape[0]
                keep = self.vt_rewards.take_keep(rows_here)
                if keep is not None and self.vt_explore_direct:  # forced rollouts are probes
                    forced = self._forced_direct_rows(rows_here)
                    if self.vt_probe_loss == "positive":  # learn only from probes that beat their group
                        index = torch.tensor(forced, device=output["advantages"].device)
                        output["advantages"][index] = output["advantages"][index].clamp(min=0)
                    else:  # rewards only
                        probes = set(forced)
                        keep = [k and i not in probes for i, k in enumerate(keep)]
                if keep is not None:  # on every process, dropping or not: the gather below is a collective
                    device = output["completion_mask"].device
                    rows = torch.tensor(keep, device=device, dtype=output["completion_mask"].dtype).unsqueeze(1)
                    mask = output.get("tool_mask")
                    mask = torch.ones_like(output["completion_mask"]) if mask is None else mask
                    output["tool_mask"] = mask * rows
                    loss_mask = output["completion_mask"] * output["tool_mask"]
                    output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
            return output

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            forced = [] if has_tool_images or self.use_vllm else self._forced_direct_rows(len(prompt_ids))
            if not forced:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)
            from transformers import LogitsProcessorList

            model = self.accelerator.unwrap_model(self.model)  # the module TRL generates with
            tool_id = self.processing_class.tokenizer.convert_tokens_to_ids("<tool_call>")
            ban = RowTokenBan(forced, tool_id, greedy=self.vt_probe_decoding == "greedy")
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
            return [i for i in range(n) if (first + i) % group >= group - self.vt_explore_direct]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.vt_anchor is not None and self.model.training:
                anchor = self.vt_anchor(model)
                self._metrics["train"]["anchor/loss"].append(anchor.item() / self.vt_anchor.weight)
                loss = loss + anchor / self.args.gradient_accumulation_steps
            return loss

    return VisionThinkGRPOTrainer


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


def _log_callback(path: Path):
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Every log record as a JSON line (the log that works without TensorBoard)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a") as handle:
                    handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def build_trainer(recipe: GRPORecipe, model=None, processor=None, train_dataset=None):
    """The configured trainer (model, processor and data loaded from the recipe unless given)."""
    from visionthink.models import load_model

    if not torch.cuda.is_available():
        torch.set_num_threads(recipe.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if model is None or processor is None:
        dtype = torch.bfloat16 if recipe.bf16 else torch.float32
        model, processor = load_model(recipe.model, dtype=dtype)
    model.train()
    _set_response_template(processor)
    args = trl_config(recipe)
    if train_dataset is None and recipe.data == "synth":
        train_dataset = grpo_env.prompt_dataset(processor.grid, recipe.train_items, seed=recipe.data_seed)
    elif train_dataset is None:
        train_dataset = grpo_env.disk_dataset(recipe.data, processor.grid)
    rewards = VisionThinkRewards(
        processor, make_judge(recipe.judge, **_judge_kwargs(recipe)), recipe.num_generations,
        variant=recipe.penalty_variant, theta=recipe.theta, penalty=recipe.penalty,
        format_value=recipe.format_reward, drop_tied=recipe.drop_tied_groups, drop_failed=recipe.drop_failed_groups,
    )
    peft_config = None
    if recipe.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                                 target_modules=recipe.lora_target_modules, task_type="CAUSAL_LM")
    from visionthink.engines.transformers_engine import never_write_ids

    if not args.use_vllm:  # transformers generation: never sample vision placeholders or `<|im_start|>`, as the
        # inference engine does (vLLM's sampling parameters have no `suppress_tokens`)
        banned = never_write_ids(processor.tokenizer)
        args.generation_kwargs = {**(args.generation_kwargs or {}), "suppress_tokens": banned}
    anchor = None
    if recipe.anchor_weight > 0:
        from accelerate import PartialState

        from visionthink.train.grpo_anchor import AnswerAnchor

        anchor = AnswerAnchor(train_dataset, processor, recipe.anchor_weight, recipe.anchor_batch_size,
                              seed=recipe.seed + PartialState().process_index)
    trainer = _trainer_class()(
        model=model,
        reward_funcs=[rewards.accuracy, rewards.format, rewards.resize_penalty],
        args=args,
        train_dataset=train_dataset,
        processing_class=processor,
        environment_factory=grpo_env.ResizeEnvironment,
        peft_config=peft_config,
        vt_rewards=rewards,
        vt_anchor=anchor,
        vt_explore_direct=recipe.explore_direct,
        vt_probe_loss=recipe.probe_loss,
        vt_probe_decoding=recipe.probe_decoding,
    )
    output_dir = Path(recipe.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.add_callback(_log_callback(output_dir / "log.jsonl"))
    return trainer


def _judge_kwargs(recipe: GRPORecipe) -> dict[str, Any]:
    if recipe.judge.strip() == "rule":
        return dict(recipe.judge_options)
    return {"fallback": recipe.judge_fallback, **recipe.judge_options}


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


def train_grpo(recipe: GRPORecipe, model=None, processor=None, train_dataset=None) -> Path:
    """Run (or resume) GRPO; returns the folder of the final model."""
    from transformers.trainer import TRAINER_STATE_NAME

    trainer = build_trainer(recipe, model, processor, train_dataset)
    output_dir = Path(recipe.output_dir)
    (output_dir / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
    resume = newest_checkpoint(output_dir, TRAINER_STATE_NAME) if recipe.resume else None
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = output_dir / "final"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True  # TRL turns it off for training
    trainer.save_model(str(final / "adapter") if recipe.lora else str(final))
    if trainer.accelerator.is_main_process:
        if recipe.lora and not trainer.is_deepspeed_enabled:  # a plain model folder, loadable everywhere
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(str(final))
        trainer.processing_class.save_pretrained(str(final))
        _write_summary(output_dir, trainer)
        if recipe.export_dir:
            export = Path(recipe.export_dir)
            shutil.rmtree(export, ignore_errors=True)
            shutil.copytree(final, export, ignore=shutil.ignore_patterns("training_args.bin"))
    return final


def _write_summary(output_dir: Path, trainer) -> None:
    """`summary.json` with the last logged values (resize ratio per family and the reward components)."""
    last: dict[str, Any] = {}
    for record in trainer.state.log_history:
        last.update(record)
    families = {f"resize_ratio/{name}": last.get(f"resize_ratio/{name}") for name in synth.FAMILIES}
    (output_dir / "summary.json").write_text(json.dumps({"last": last, "families": families}, indent=2))
    plot_resize_ratio(trainer.state.log_history, output_dir / "resize_ratio.png")


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window - 1` values before it."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]


def plot_resize_ratio(log_history: list[dict[str, Any]], path: Path, window: int = 25) -> Path | None:
    """Resize ratio per family over the steps (what the penalty should separate), as a PNG.

    Each step sees only a few questions per family, so the curves are moving averages over `window` steps.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name in (*synth.FAMILIES, None):
        key = f"resize_ratio/{name}" if name else "resize_ratio"
        points = [(r["step"], float(r[key])) for r in log_history if key in r and "step" in r]
        if points:
            steps = [step for step, _ in points]
            values = [value for _, value in points]
            axes.plot(steps, moving_average(values, window), label=name or "all", linewidth=1.5 if name else 2.5,
                      linestyle="-" if name else "--")
    axes.set_xlabel("step")
    axes.set_ylabel(f"resize ratio ({window}-step mean)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
