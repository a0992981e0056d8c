"""Scripted GRPO rollouts for the tests, and a runnable one-step GRPO run that records its rewards.

    python tests/grpo_scripted.py MODEL_DIR OUT_DIR PER_DEVICE_BATCH
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/grpo_scripted.py ...

The run scripts every turn from the row's GLOBAL index in the generation batch (process index x
per-device batch + local index), so one process with the whole batch and two processes with half each
produce the same rollouts; each process writes the rewards TRL received for its rows to OUT_DIR/rank<i>.json.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from visionthink import protocol
from visionthink.profiles import VISIONTHINK

NUM_GENERATIONS = 6
TRUTH = "red"
DIRECT_OK, DIRECT_WRONG, RESIZE_OK, RESIZE_WRONG = "direct-ok", "direct-wrong", "resize-ok", "resize-wrong"
PLAN = [
    # group 0: r = 2/4 >= theta: the correct resized answers pay
    DIRECT_OK, DIRECT_OK, RESIZE_OK, RESIZE_OK, DIRECT_WRONG, RESIZE_WRONG,
    # group 1 (spans both processes with 9 rows each): r = 1/6 < theta: the correct direct answer pays
    RESIZE_OK, RESIZE_OK, RESIZE_OK, RESIZE_OK, RESIZE_OK, DIRECT_OK,
    # group 2: every reward ties: left out of the loss
    DIRECT_OK, DIRECT_OK, DIRECT_OK, DIRECT_OK, DIRECT_OK, DIRECT_OK,
]


def recipe(tmp_path, model_dir, **overrides):
    """A one-step GRPO config on `model_dir` for the tests: one group of 4 rows, written under `tmp_path / "run"`."""
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    values = dict(model=str(model_dir), output_dir=str(tmp_path / "run"), max_steps=1, num_generations=4,
                  per_device_train_batch_size=4, train_items=6, save_steps=1, threads=1, max_completion_length=128,
                  report_to="none", resume=False, drop_tied_groups=False)
    return VisionThinkGRPOConfig(**{**values, **overrides})


def trained_episodes(processor, recorded, high_res_image=None, profile=None, cut_off: bool = False) -> list:
    """The episodes of one recorded generation (`record_generations`), each checked against what TRL trained on:
    its prompt + completion ids are `tokens.encode` of the episode in `profile` (the template closes the last turn
    with "<|im_end|>\n"; with `cut_off`, a completion that ends without it may be a prefix of the rendering), and
    TRL's loss mask (`tool_mask`) is the protocol's assistant mask."""
    import torch

    from visionthink.tokens import assistant_mask, encode
    from visionthink.train import grpo_env

    prompts, (prompt_ids, completion_ids, tool_mask, completions) = recorded[0], recorded[1][:4]
    newline = processor.tokenizer.encode("\n", add_special_tokens=False)
    episodes = []
    for i, prompt in enumerate(prompts):
        episode = grpo_env.rollout_episode(processor, prompt, completions[i], completion_ids[i], high_res_image,
                                           protocol_profile=profile)
        trained = list(prompt_ids[i]) + list(completion_ids[i])
        rendered = encode(processor, episode.messages, protocol=profile)["input_ids"][0].tolist()
        if cut_off and completion_ids[i][-1] != processor.tokenizer.eos_token_id:
            assert rendered[: len(trained)] == trained  # cut by the budget: the rendering closes the turn
        else:
            assert rendered == trained + newline
        mask = assistant_mask(processor, torch.tensor(rendered)).tolist()[len(prompt_ids[i]) : len(trained)]
        assert [bool(m) for m in tool_mask[i]] == mask
        episodes.append(episode)
    return episodes


def script_turns(trainer, tokenizer, first_turn, second_turn, offset: int = 0):
    """Replace generation by scripted turns: `first_turn(row)` / `second_turn(row)` give the text of row
    `offset + i` of the batch (None keeps the model's own sampling for that turn); the second turn is asked
    only for the rows whose scripted first turn called the tool (else by position). Returns the list that
    records what `_generate` returns."""
    original = trainer._generate_single_turn
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    resized: list[int] = []  # rows whose scripted first turn called the tool: TRL's second turn has only these

    def scripted(prompt_ids, images, fields, num_generations, has_tool_images=False):
        if has_tool_images:
            rows = resized[: len(prompt_ids)] if len(resized) >= len(prompt_ids) else list(range(len(prompt_ids)))
            texts = [second_turn(row) for row in rows]
        else:
            texts = [first_turn(offset + i) for i in range(len(prompt_ids))]
            resized[:] = [offset + i for i, t in enumerate(texts) if t is not None and "<tool_call>" in t]
        if any(text is None for text in texts):
            sampled, logprobs = original(prompt_ids, images, fields, num_generations, has_tool_images)
        else:
            sampled, logprobs = [None] * len(texts), None
        ids = [s if t is None else tokenizer.encode(t, add_special_tokens=False) + [end]
               for s, t in zip(sampled, texts, strict=True)]
        return ids, logprobs

    trainer._generate_single_turn = scripted
    return record_generations(trainer)


def train_scripted(config, first_turn, second_turn):
    """`train_grpo(config)` with the built trainer's generation scripted by `script_turns`.
    Returns (final model folder, trainer, the recorded generations)."""
    from visionthink.train import grpo as grpo_module

    built = {}
    real_build = grpo_module.build_trainer

    def build_and_script(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        built["recorded"] = script_turns(trainer, trainer.processing_class.tokenizer, first_turn, second_turn)
        built["trainer"] = trainer
        return trainer

    grpo_module.build_trainer = build_and_script
    try:
        final = grpo_module.train_grpo(config)
    finally:
        grpo_module.build_trainer = real_build
    return final, built["trainer"], built["recorded"]


def capture_rewards(trainer, answer: str) -> list:
    """Make every row's truth `answer` and append each batch's rewards (TRL's tensor) to the returned list."""
    seen = []
    calculate = trainer._calculate_rewards

    def capture(inputs, prompts, completions, ids):
        for row in inputs:
            row["answer"] = answer
        result = calculate(inputs, prompts, completions, ids)
        seen.append(result.clone())
        return result

    trainer._calculate_rewards = capture
    return seen


def record_generations(trainer) -> list:
    """Wrap `trainer._generate`: every call's (prompts, output) is appended to the returned list."""
    recorded = []
    generate = trainer._generate

    def recording(prompts):
        out = generate(prompts)
        recorded.append((prompts, out))
        return out

    trainer._generate = recording
    return recorded


def record_first_turns(trainer) -> list:
    """Wrap `trainer._generate_single_turn`: the ids of every first-turn generation call are appended to the
    returned list (calls that continue after a tool image are not recorded)."""
    first_turns = []
    generate = trainer._generate_single_turn

    def recording(prompt_ids, images, fields, num_generations, has_tool_images=False):
        ids, logprobs = generate(prompt_ids, images, fields, num_generations, has_tool_images)
        if not has_tool_images:
            first_turns.append(ids)
        return ids, logprobs

    trainer._generate_single_turn = recording
    return first_turns


def favour_token(token_id: int, amount: float):
    """A forward hook for the output head that adds `amount` to one token's logit everywhere."""

    def hook(module, args, output):
        output = output.clone()
        output[..., token_id] += amount
        return output

    return hook


@contextmanager
def favoured(model, token_id: int, amount: float):
    """Within the block, the model's output head adds `amount` to one token's logit everywhere (`favour_token`)."""
    hook = model.get_output_embeddings().register_forward_hook(favour_token(token_id, amount))
    try:
        yield model
    finally:
        hook.remove()


def with_and_without_favour(model, token_id: int, amount: float, compute):
    """`compute()` without gradients, then again while the model favours `token_id` (`favoured`): (plain, favoured)."""
    import torch

    with torch.no_grad():
        plain = compute()
        with favoured(model, token_id, amount):
            return plain, compute()


def plan_first_turn(index: int) -> str:
    kind = PLAN[index % len(PLAN)]
    if kind.startswith("resize"):
        return VISIONTHINK.call_text("The label is too small to read.", "resize_image", {"action": "resize"})
    return protocol.answer_text("I can see it.", TRUTH if kind == DIRECT_OK else "blue")


def plan_second_turn(index: int) -> str:
    kind = PLAN[index % len(PLAN)]
    return protocol.answer_text("Now I can see it.", TRUTH if kind == RESIZE_OK else "blue")


def record_rewards(trainer) -> list[dict]:
    """Wrap the trainer's reward scoring: every scored batch's per-row rewards, appended to the returned list."""
    seen: list[dict] = []
    score = trainer.rewards.score_batch

    def recording(prompts, completions, completion_ids, rows, log_metric=None):
        scores = score(prompts, completions, completion_ids, rows, log_metric)
        seen.append({"accuracy": scores.accuracy, "format": scores.format, "penalty": scores.penalty,
                     "keep": scores.keep, "uid": [row["uid"] for row in rows]})
        return scores

    trainer.rewards.score_batch = recording
    return seen


def main(model_dir: str, out_dir: str, per_device: int) -> None:
    import datasets
    from accelerate import PartialState

    from visionthink.data import synth
    from visionthink.models import load_model
    from visionthink.train import grpo_env, leave_distributed
    from visionthink.train.grpo import build_trainer
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    state = PartialState()
    model, processor = load_model(model_dir, device="cpu")
    rows = [grpo_env.prompt_row(item, processor.grid) | {"answer": TRUTH} for item in synth.split_items("train", 3)]
    config = VisionThinkGRPOConfig(model=model_dir, output_dir=str(Path(out_dir) / "run"), max_steps=1,
                                   num_generations=NUM_GENERATIONS, per_device_train_batch_size=per_device,
                                   save_steps=100, threads=1, max_completion_length=160, report_to="none",
                                   resume=False, drop_tied_groups=True, penalty_variant="paper")
    trainer = build_trainer(config, model, processor, datasets.Dataset.from_list(rows))
    script_turns(trainer, processor.tokenizer, plan_first_turn, plan_second_turn,
                 offset=state.process_index * per_device)
    seen = record_rewards(trainer)
    trainer.train()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{state.process_index}.json").write_text(json.dumps(seen))
    leave_distributed(0)


if __name__ == "__main__":
    import faulthandler
    import os

    if os.environ.get("GRPO_SCRIPTED_WATCHDOG"):  # print every thread's stack and exit if the run hangs
        faulthandler.dump_traceback_later(float(os.environ["GRPO_SCRIPTED_WATCHDOG"]), exit=True)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
