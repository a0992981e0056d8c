"""GRPO on TRL: the tool, the ids TRL trains on against the protocol's rendering, rewards, a smoke run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import resize_text  # tests/ is on sys.path
from grpo_scripted import (
    capture_rewards,
    favoured,
    recipe,
    record_first_turns,
    record_generations,
    script_turns,
    train_scripted,
    trained_episodes,
)

from visionthink import protocol
from visionthink.data import synth
from visionthink.errors import VisionThinkError
from visionthink.images import make_views
from visionthink.profiles import VISIONTHINK
from visionthink.tools import RESIZE
from visionthink.train import grpo_env
from visionthink.train.grpo import build_trainer
from visionthink.train.grpo_config import VisionThinkGRPOConfig
from visionthink.train.grpo_trainer import RowTokenBan

pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[1]


def test_tool_schema_and_answers_follow_the_protocol():
    from transformers.utils import get_json_schema

    environment = grpo_env.environment_for(None)
    schema = get_json_schema(environment().resize_image)  # what TRL renders from the method
    assert schema == RESIZE.schema
    assert json.dumps(schema) == json.dumps(RESIZE.schema)  # key order renders too
    item = synth.split_items("train", 1)[0]
    env = environment()
    env.reset(high_res_image=item.image)
    assert env.resize_image(action="resize") == protocol.tool_turn(RESIZE, item.image)["content"]
    second = env.resize_image(action="resize")  # at most one call
    assert second[0]["text"].startswith("Error:")
    assert second == protocol.error_turn("a tool was already called")["content"]
    env.reset(high_res_image=item.image)
    assert env.resize_image()[0]["type"] == "image"  # a call without arguments is valid, as for the parser
    env.reset(high_res_image=item.image)
    assert env.resize_image(action="zoom") == protocol.error_turn("unknown action 'zoom'; expected 'resize'")["content"]


def test_trl_prompt_is_the_first_turn(random_tiny):
    from trl.data_utils import prepare_multimodal_messages

    _, processor = random_tiny
    item = synth.split_items("train", 1)[0]
    row = grpo_env.prompt_row(item, processor.grid)
    rebuilt = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    assert rebuilt == protocol.first_turn(item.question, row["image"])


def test_trained_ids_are_the_protocol_rendering(tmp_path, tiny_dir):
    """TRL's prompt + completion ids for a resize episode are `tokens.encode` of the same episode, and
    TRL's loss mask (`tool_mask`) is exactly the protocol's assistant mask; rewards follow Eq. 5."""
    config = recipe(tmp_path, tiny_dir)
    trainer = build_trainer(config)
    assert trainer.chat_template is None  # TRL kept the project's template (it is prefix-preserving)
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    think = "Look at the image."

    def answer_for(row):
        return protocol.answer_text(think, "dots" if row == 3 else "checker")

    first = {0: resize_text(think), 1: resize_text(think)}
    recorded = script_turns(trainer, tokenizer, lambda i: first.get(i, answer_for(i)), answer_for)
    # the truth matches the scripted answer so rows 0-2 are correct ("checker" is one token of the tiny
    # vocabulary, so the resize episode fits max_completion_length)
    rewards_seen = capture_rewards(trainer, "checker")
    trainer.train()

    prompts = recorded[0][0]
    episodes = trained_episodes(processor, recorded[0])
    assert len(episodes) == 4
    for prompt, episode in zip(prompts, episodes, strict=True):
        assert episode.well_formed and episode.messages[:2] == prompt
        assert len(protocol.images_in(episode.messages)) == (2 if episode.resized else 1)
    assert sum(episode.resized for episode in episodes) == 2
    # rewards per function (accuracy, format, -penalty): r = 1/3 >= theta, so correct resized answers lose 0.1
    got = rewards_seen[0]
    assert got[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert got[:, 1].tolist() == [0.5] * 4
    assert got[:, 2].tolist() == pytest.approx([-0.1, -0.1, 0.0, 0.0])
    # the loss pass saw both images of each resized episode: 4 prompt images + 2 tool images
    assert trainer.images_in_loss == [6]


def test_tied_groups_leave_the_loss(tmp_path, tiny_dir):
    config = recipe(tmp_path, tiny_dir, drop_tied_groups=True)
    trainer = build_trainer(config)
    tokenizer = trainer.processing_class.tokenizer
    same = protocol.answer_text("Look at the image.", "nothing")
    script_turns(trainer, tokenizer, lambda i: same, lambda i: same)
    seen = []
    original = trainer._compute_loss

    def compute_loss(model, inputs):
        seen.append(inputs["tool_mask"].sum().item())
        return original(model, inputs)

    trainer._compute_loss = compute_loss
    trainer.train()
    assert seen == [0]  # one group, all rewards tie: nothing left in the loss
    assert trainer.rewards.history[-1]["groups/dropped"] == 1.0


@pytest.mark.slow
def test_train_grpo_smoke(tmp_path, tiny_dir):
    """A short run end to end: the first turn is scripted to call the tool (a random model would not), the
    second turn is sampled by the model with the high-res image in context; checkpoints and logs appear."""
    config = recipe(tmp_path, tiny_dir, max_steps=2, num_generations=2, per_device_train_batch_size=4,
                    save_steps=1, max_completion_length=128, save_total_limit=1)
    call = resize_text("Look at the image.")
    final, trainer, recorded = train_scripted(config, lambda i: call if i % 2 == 0 else None, lambda i: None)
    run = tmp_path / "run"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert (run / "checkpoint-2" / "model.safetensors").is_file()
    assert trainer.state.global_step == 2
    # the tool put the high-res image into the second turn, and the loss pass saw it
    for _prompts, out in recorded:
        completions, tool_images = out[3], out[7]
        resized = [i for i, c in enumerate(completions) if any(m["role"] == "tool" for m in c)]
        assert resized and all(tool_images[i] and tool_images[i][0].size in synth.IMAGE_SIZES for i in resized)
        assert all(c[-1]["role"] == "assistant" for i, c in enumerate(completions) if i in resized)
    assert all(n > 4 for n in trainer.images_in_loss)  # 4 low-res prompt images plus the tool's
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "rewards/accuracy/mean" in r]
    assert len(steps) == 2
    for name in ("rewards/format/mean", "rewards/resize_penalty/mean", "resize_ratio", "visual_tokens/mean"):
        assert name in steps[0]
    assert steps[0]["tools/call_frequency"] > 0
    assert (run / "summary.json").is_file() and (run / "resize_ratio.png").is_file()


def test_recipe_sections_load():
    from visionthink.recipes import load_recipe

    tiny = load_recipe("recipes/tiny-synth.yaml", "grpo", VisionThinkGRPOConfig,
                       ["max_steps=3", "penalty_variant=flat", "num_iterations=2"])
    assert tiny.max_steps == 3 and tiny.penalty_variant == "flat"
    assert tiny.num_iterations == 2  # any TRL field, by its TRL name
    assert (tiny.per_device_train_batch_size, tiny.max_tool_calling_iterations, tiny.remove_unused_columns) == (
        32, 1, False)
    big = load_recipe("recipes/qwen2.5-vl-7b.yaml", "grpo", VisionThinkGRPOConfig)
    assert (big.num_generations, big.learning_rate, big.beta, big.temperature) == (16, 1e-6, 0.001, 1.0)
    assert big.use_vllm and big.vllm_mode == "server" and big.max_steps == 200
    with pytest.raises(VisionThinkError, match=r"steps \(now max_steps\), tempreature"):
        load_recipe("recipes/tiny-synth.yaml", "grpo", VisionThinkGRPOConfig, ["steps=3", "tempreature=0.7"])
    with pytest.raises(VisionThinkError, match="penalty_variant must be one of"):
        load_recipe("recipes/tiny-synth.yaml", "grpo", VisionThinkGRPOConfig, ["penalty_variant=steep"])


def test_views_match_the_engine():
    """The dataset's two views are the ones the inference engine makes (same grid, same resampling)."""
    from visionthink.images import PixelGrid

    grid = PixelGrid(factor=28, min_pixels=56 * 56, max_pixels=112 * 112)
    item = synth.split_items("train", 1)[0]
    row = grpo_env.prompt_row(item, grid)
    views = make_views(item.image, grid)
    assert row["image"].tobytes() == views.low.tobytes() and row["high_res_image"].tobytes() == views.high.tobytes()


@pytest.mark.parametrize("variant", ["paper", "release", "flat", "none"])
def test_group_rewards_do_not_depend_on_how_processes_split_the_batch(variant):
    """Rows of a group may sit on several processes: each process's slice of the combined rewards is the
    single-process result's slice (the real multi-process run is `torchrun --nproc_per_node 2`)."""
    from visionthink.rewards.judge_base import Verdict
    from visionthink.rewards.rewards import GradedRollout
    from visionthink.train.grpo_rewards import combine_groups

    rows = []
    for group, pattern in enumerate([
        [(1, True), (1, True), (1, False), (0, False)],   # r = 1/3 >= theta: resized corrects pay
        [(1, True), (1, True), (1, True), (0, False)],    # r = 0: nothing to pay in `paper`
        [(1, True), (1, True), (1, False), (0, True)],     # a wrong resized answer is never penalised
        [(0, False)] * 4,                                  # tied
    ]):
        for score, resized in pattern:
            rows.append((f"q{group}", GradedRollout(Verdict(float(score)), 0.5, resized)))
    single = combine_groups(rows, 0, len(rows), 4, variant)
    for processes in (2, 4, 8):
        n = len(rows) // processes
        for index in range(processes):
            part = combine_groups(rows, index, n, 4, variant)
            for key in ("accuracy", "format", "penalty", "keep"):
                assert getattr(part, key) == getattr(single, key)[index * n : (index + 1) * n], (processes, index, key)
    assert single.keep[12:] == [False] * 4 and all(single.keep[:12])
    with pytest.raises(RuntimeError, match="mixes questions"):
        combine_groups(rows, 0, len(rows), 3, variant)



def test_reward_functions_read_the_scored_batch():
    """The batch is scored once; TRL's three reward functions only read each row's terms from its columns."""
    from visionthink.train.grpo_rewards import BatchScores, VisionThinkRewards

    scores = BatchScores(accuracy=[1.0, 0.0], format=[0.5, 0.0], penalty=[0.1, 0.0], keep=[True, False], metrics={})
    rows = scores.columns()
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    funcs = VisionThinkRewards(None, None, 2).reward_funcs
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "resize_penalty"]  # the names TRL logs
    assert [f(prompts=[], completions=[], **columns) for f in funcs] == [[1.0, 0.0], [0.5, 0.0], [-0.1, 0.0]]

@pytest.mark.slow
def test_sampled_rollouts_render_as_the_protocol(tmp_path, shipped_model_dir):
    """With the trained checkpoint (its rollouts are well-formed text, unlike a random model's), every
    sampled rollout's trained ids are the protocol's rendering of the episode, resized or not."""
    config = recipe(tmp_path, shipped_model_dir, num_generations=8, per_device_train_batch_size=16, train_items=8)
    trainer = build_trainer(config)
    recorded = record_generations(trainer)
    trainer.train()
    (generation,) = recorded
    assert trained_episodes(trainer.processing_class, generation, cut_off=True)  # each rollout checked there


# ---------------------------------------------------------------- real runs: two processes, kill and resume, bad judge


def _launch(args: list[str], env_extra: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _rewards_by_row(out_dir, ranks: int) -> list[tuple]:
    rows = []
    for rank in range(ranks):
        batches = json.loads((out_dir / f"rank{rank}.json").read_text())
        assert len(batches) == 1
        b = batches[0]
        rows += list(zip(b["uid"], b["accuracy"], b["format"], b["penalty"], b["keep"], strict=True))
    return rows


@pytest.mark.slow
def test_two_processes_give_the_single_process_rewards(tmp_path, tiny_dir, free_port):
    """One GRPO step on scripted rollouts, run by one process (18 rows) and by `accelerate launch` with two
    CPU processes (9 rows each, so group 1 spans both): every row gets the same rewards, and the group
    penalty and the tie filter come out as Eq. 5 says."""
    script = str(REPO / "tests" / "grpo_scripted.py")
    single = _launch([sys.executable, script, str(tiny_dir), str(tmp_path / "one"), "18"], {})
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), script]
    double = _launch([*launcher, str(tiny_dir), str(tmp_path / "two"), "9"], {"ACCELERATE_USE_CPU": "true"})
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _rewards_by_row(tmp_path / "one", 1), _rewards_by_row(tmp_path / "two", 2)
    assert len(one) == len(two) == 18
    assert one == two
    # the plan's groups (the sampler shuffles the questions, not the rows inside a group)
    from grpo_scripted import PLAN

    penalties = [round(p, 6) for _, _, _, p, _ in one]
    for group in range(3):
        uids = {u for u, *_ in one[group * 6 : (group + 1) * 6]}
        assert len(uids) == 1
    assert penalties[:6] == [0, 0, 0.1, 0.1, 0, 0]          # r = 1/2: correct resized answers pay
    assert penalties[6:12] == [0, 0, 0, 0, 0, 0.1]          # r = 1/6 < 0.2: the correct direct answer pays
    assert [k for *_, k in one] == [True] * 12 + [False] * 6  # group 2 ties: out of the loss
    assert [a for _, a, *_ in one] == [float(k.endswith("-ok")) for k in PLAN]


@pytest.mark.slow
def test_killed_run_resumes_and_ends_at_the_same_step(tmp_path, tiny_dir):
    """`visionthink train grpo` SIGKILLed after its first checkpoint, then started again with the same
    command: it resumes from the newest complete checkpoint and stops at the recipe's step count."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "visionthink", "train", "grpo", f"model={tiny_dir}", f"output_dir={out}",
               "max_steps=6", "save_steps=2", "save_total_limit=5", "num_generations=2",
               "per_device_train_batch_size=4",
               "train_items=8", "max_completion_length=24", "report_to=none", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint's files land
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "final").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert killed_at < 6
    # a later save cut short by the kill: weights written, trainer_state.json (written last) missing
    cut_short = out / f"checkpoint-{killed_at + 1}"
    cut_short.mkdir()
    shutil.copy(out / f"checkpoint-{killed_at}" / "model.safetensors", cut_short)
    logged_before = len((out / "log.jsonl").read_text().splitlines())
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert (out / "final" / "model.safetensors").is_file()
    second_run = (out / "log.jsonl").read_text().splitlines()[logged_before:]
    steps = [json.loads(line)["step"] for line in second_run if "rewards/accuracy/mean" in line]
    assert steps == list(range(killed_at + 1, 7))  # the second run did only the steps left
    # started once more, the finished run trains no further step (transformers would train a seventh)
    (out / "final").rename(out / "final-before")
    logged_before = len((out / "log.jsonl").read_text().splitlines())
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert third.returncode == 0, third.stderr[-3000:]
    assert not (out / "checkpoint-7").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) == logged_before
    import torch
    from safetensors.torch import load_file

    again = load_file(out / "final" / "model.safetensors")
    before = load_file(out / "final-before" / "model.safetensors")
    assert again.keys() == before.keys() and all(torch.equal(again[k], before[k]) for k in again)


ANSWERS = ["red", "blue", "square", "2"]
"""Scripted answers for the judge tests: a grade needs a call, so every rollout answers something."""


@pytest.mark.slow
def test_training_survives_a_misbehaving_judge(tmp_path, tiny_dir):
    """GRPO graded by an HTTP judge on loopback that answers 500, garbage, hangs or closes the connection
    (plus some good answers): training finishes, and the failures are counted in the logs."""
    from test_judges import judge_server

    actions = [("status", 500), ("raw", "not json"), ("hang", 5.0), ("reply", "no score here"),
               ("reply", "Score: 1"), ("status", 503), ("reply", "Score: 0")]
    calls = {"n": 0}

    def misbehave(body):
        calls["n"] += 1
        return actions[calls["n"] % len(actions)]

    with judge_server() as state:
        state.default = misbehave
        for fallback in ("rule", "drop"):
            config = recipe(tmp_path / fallback, tiny_dir, max_steps=2, num_generations=2,
                            per_device_train_batch_size=4,
                            judge=f"http:{state.url}#judge", judge_fallback=fallback,
                            drop_failed_groups=fallback == "drop",
                            judge_options={"timeout": 0.5, "retries": 1, "backoff": 0.01, "backoff_max": 0.02,
                                           "jitter": 0.0, "trust_env": False})
            trainer = build_trainer(config)
            tokenizer = trainer.processing_class.tokenizer
            script_turns(trainer, tokenizer, lambda i: protocol.answer_text("Look.", ANSWERS[i % 4]), lambda i: None)
            trainer.train()
            assert trainer.state.global_step == 2
            logs = trainer.rewards.history
            assert sum(m["judge/failures"] for m in logs) > 0
            if fallback == "drop":
                assert sum(m["groups/judge_failed"] for m in logs) > 0
                assert sum(m["groups/dropped"] for m in logs) >= sum(m["groups/judge_failed"] for m in logs)
        assert state.calls > 0


@pytest.mark.slow
@pytest.mark.parametrize("probe_loss", ["none", "positive"])
def test_forced_direct_rows_never_call_the_tool(tmp_path, tiny_dir, probe_loss):
    """With `explore_direct=2` and groups of 4, a model pushed to write `<tool_call>` everywhere writes it in
    the first two rollouts of every group and never in the last two (generated with the token banned), and
    those two probes are left out of the loss."""
    config = recipe(tmp_path, tiny_dir, max_steps=1, num_generations=4, per_device_train_batch_size=8,
                    explore_direct=2, max_completion_length=8, probe_loss=probe_loss)
    trainer = build_trainer(config)
    tool_call = trainer.processing_class.tokenizer.convert_tokens_to_ids("<tool_call>")

    first_turns = record_first_turns(trainer)
    in_loss = []
    compute_loss = trainer._compute_loss

    def recording_loss(model, inputs):
        learns = inputs["tool_mask"].sum(dim=1).gt(0).tolist()  # TRL may shuffle rows: match them by content
        probes = [tool_call not in row for row in inputs["completion_ids"].tolist()]
        advantages = inputs["advantages"].reshape(len(probes), -1)[:, 0].tolist()
        in_loss.append(list(zip(learns, probes, advantages, strict=True)))
        return compute_loss(model, inputs)

    trainer._compute_loss = recording_loss
    with favoured(trainer.model, tool_call, 100.0):
        trainer.train()
    wrote_tool_call = [tool_call in ids for ids in first_turns[0]]
    assert wrote_tool_call == [True, True, False, False] * 2
    rows = in_loss[0]
    assert sorted(probe for _, probe, _ in rows) == [False] * 4 + [True] * 4
    if probe_loss == "none":  # the probes earn rewards, not gradients
        assert all(learns != probe for learns, probe, _ in rows)
    else:  # the probes learn, but only upwards
        assert all(learns for learns, _, _ in rows)
        assert all(advantage >= 0 for _, probe, advantage in rows if probe)
    assert trainer.rewards.history  # the step was scored and trained
    with pytest.raises(ValueError, match="explore_direct"):
        build_trainer(recipe(tmp_path, tiny_dir, num_generations=4, explore_direct=5))


def test_row_token_ban_greedy_leaves_probe_rows_their_best_other_token():
    scores = torch.randn(4, 10)
    scores[1, 3] = scores[3, 3] = 50.0  # the banned token is the favourite of both probe rows
    original = scores.clone()
    out = RowTokenBan([1, 3], token_id=3, greedy=True)(None, scores)
    assert torch.equal(out[[0, 2]], original[[0, 2]])  # other rows untouched
    for row in (1, 3):
        allowed = original[row].clone()
        allowed[3] = float("-inf")
        assert torch.isfinite(out[row]).sum() == 1 and out[row].argmax() == allowed.argmax()
    sampled = torch.multinomial((out[[1, 3]] / 1.7).softmax(-1), 20, replacement=True)
    assert (sampled == out[[1, 3]].argmax(-1, keepdim=True)).all()  # whatever the temperature


@pytest.mark.slow
def test_greedy_probes_of_a_group_answer_alike(tmp_path, tiny_dir):
    """`probe_decoding: greedy`: the two probes of each group (same prompt, tool banned) write the same first
    turn, while the sampled rollouts of a random model at temperature 1 do not all agree."""
    config = recipe(tmp_path, tiny_dir, max_steps=1, num_generations=4, per_device_train_batch_size=8,
                    explore_direct=2, max_completion_length=8, probe_decoding="greedy")
    trainer = build_trainer(config)
    tool_call = trainer.processing_class.tokenizer.convert_tokens_to_ids("<tool_call>")
    first_turns = record_first_turns(trainer)
    trainer.train()
    rows = first_turns[0]
    for group in (rows[0:4], rows[4:8]):
        assert group[2] == group[3] and tool_call not in group[2]
    assert len({tuple(row) for row in rows[0:2] + rows[4:6]}) > 1
    with pytest.raises(ValueError, match="probe_decoding"):
        build_trainer(recipe(tmp_path, tiny_dir, explore_direct=2, probe_decoding="beam"))


def test_a_turn_whose_tool_calls_all_fail_keeps_training(tmp_path, tiny_dir):
    """Every call of the batch is malformed, so its tool turn returns text and no image: TRL's tool loop then splits
    the prompts' image fields by `image_grid_thw` (a seed-1 ladder run crashed there at step 27). It trains on."""
    trainer = build_trainer(recipe(tmp_path, tiny_dir))
    tokenizer = trainer.processing_class.tokenizer
    think = "Look at the image."
    bad_call = VISIONTHINK.call_text(think, "resize_image", {"action": "shrink"})
    answer = protocol.answer_text(think, "checker")
    recorded = script_turns(trainer, tokenizer, lambda i: bad_call if i < 2 else answer, lambda i: answer)
    trainer.train()
    completions = recorded[0][1][3]
    for row in completions[:2]:  # the tool answered in text, and the model wrote its next turn after it
        assert row[1]["role"] == "tool" and "Error" in row[1]["content"][0]["text"] and row[2]["role"] == "assistant"
    assert all("<answer>" in row[0]["content"] for row in completions[2:])
    assert trainer.state.global_step == 1
