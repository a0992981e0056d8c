"""Region zoom (issue 12) wired into training: SFT renders each example in its own profile, GRPO's environment
serves `zoom_image` with the profile's schema and crop, rollouts record zoom actions, the `cost` penalty runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_GRID as GRID  # tests/ is on sys.path

from visionthink import protocol
from visionthink.data import synth
from visionthink.images import Views, make_views, zoom_crop
from visionthink.profiles import VISIONTHINK_ZOOM
from visionthink.tokens import IGNORE_INDEX, assistant_mask, encode, encode_for_training, render_text
from visionthink.tools import RESIZE, ZOOM
from visionthink.tools.zoom import check_box
from visionthink.train import grpo_env

# ---------------------------------------------------------------- SFT


def test_encode_for_training_renders_in_the_given_profile(random_tiny):
    """`protocol=` reaches the renderer (the zoom profile's tool block and instruction); the default is
    `visionthink`'s rendering, and the labels are the assistant turns of the profile's rendering."""
    from visionthink.train.sft_data import sample_example

    _, processor = random_tiny
    rng = np.random.default_rng(4)
    example = next(e for e in iter(lambda: sample_example(rng, processor.grid, 1.0, 0.0, zoom_fraction=1.0), None)
                   if e.zoomed)
    trained = encode_for_training(processor, example.messages, protocol=example.protocol)
    rendered = encode(processor, example.messages, protocol=VISIONTHINK_ZOOM)
    assert trained["input_ids"].tolist() == rendered["input_ids"].tolist()
    ids = trained["input_ids"][0]
    mask = assistant_mask(processor, ids)
    assert trained["labels"][0].tolist() == torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX)).tolist()
    text = render_text(processor, example.messages, protocol=VISIONTHINK_ZOOM)
    assert json.dumps(ZOOM.schema) in text and protocol.ZOOM_USER_INSTRUCTION in text
    trained_text = processor.tokenizer.decode(ids[mask])
    assert ZOOM.name in trained_text  # the zoom call (with the label box) is trained on
    default = encode_for_training(processor, example.messages)
    assert default["input_ids"].tolist() == encode(processor, example.messages)["input_ids"].tolist()
    assert json.dumps(ZOOM.schema) not in render_text(processor, example.messages)


@pytest.mark.slow
def test_sft_with_zoom_fraction_trains_on_the_zoom_rendering(tmp_path, random_tiny, tiny_dir, monkeypatch):
    """Two SFT steps with `zoom_fraction` > 0: every protocol example is encoded in its own profile, the zoom
    conversations' trained ids are the `visionthink-zoom` rendering, and validation reports the zoom prompts."""
    from visionthink.train import sft
    from visionthink.train.sft import SFTConfig, train_sft

    _, processor = random_tiny
    seen = []
    real = sft.encode_for_training

    def recording(proc, messages, with_tools=True, protocol=None):
        batch = real(proc, messages, with_tools, protocol=protocol)
        seen.append((messages, protocol, batch["input_ids"][0].tolist()))
        return batch

    monkeypatch.setattr(sft, "encode_for_training", recording)
    config = SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "run"), steps=2, batch_size=8,
                       learning_rate=1e-4, warmup_steps=1, save_every=2, eval_every=2, eval_items=4, threads=1,
                       resize_fraction=1.0, full_res_fraction=0.0, zoom_fraction=1.0, grounding_weight=1.0,
                       box_head_weight=1.0, grounding_fraction=0.25)
    final = train_sft(config)
    assert (final / "config.json").is_file()
    assert len(seen) == 16 and all(p == "visionthink-zoom" for _, p, _ in seen)
    zoomed = [(messages, ids) for messages, _, ids in seen
              if any(m["role"] == "tool" and m.get("name") == ZOOM.name for m in messages)]
    assert zoomed  # label questions zoom (zoom_fraction 1), coarse ones resize
    for messages, ids in zoomed:
        assert ids == encode(processor, messages, protocol=VISIONTHINK_ZOOM)["input_ids"][0].tolist()
        assert ids != encode(processor, messages)["input_ids"][0].tolist()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(key.startswith("val_zoom_heldout/low/") for key in log[-1])
    # the grounding heads trained at every step
    assert all(0.0 <= record["grounding/token_position_acc"] <= 1.0 for record in log)
    assert all("grounding/label_cell_acc" in record for record in log)
    assert any(0.0 <= record.get("box_head_acc", -1) <= 1.0 for record in log)  # the box head saw zoom calls


def test_sft_zoom_recipe_section_loads():
    from visionthink.recipes import load_recipe
    from visionthink.train.sft import SFTConfig

    zoom = load_recipe("recipes/tiny-synth.yaml", "sft_zoom", SFTConfig)
    assert zoom.zoom_fraction > 0 and zoom.init_from
    assert not str(zoom.output_dir).startswith("checkpoints")
    assert zoom.export_dir is None or zoom.export_dir not in ("checkpoints/tiny-synth", "checkpoints/tiny-synth-sft")
    for section in ("sft_perception", "sft", "sft_refresh"):
        assert load_recipe("recipes/tiny-synth.yaml", section, SFTConfig).zoom_fraction == 0.0
    chain = ["sft_zoom_cells", "sft_zoom_calls", "sft_zoom_mix", "sft_zoom_ground", "sft_zoom", "sft_zoom_read"]
    stages = [load_recipe("recipes/tiny-synth.yaml", section, SFTConfig) for section in chain]
    assert stages[0].init_from == "checkpoints/tiny-synth-sft"
    for before, after in zip(stages, stages[1:], strict=False):  # each stage starts from the one before
        assert after.init_from == f"{before.output_dir}/final"
    assert all(stage.zoom_fraction > 0 and stage.export_dir is None for stage in stages)
    assert all(stage.stop_at is None or stage.stop_at < stage.steps for stage in stages)


# ---------------------------------------------------------------- GRPO

THINK = "Look at the image."


def zoom_text(think: str, box) -> str:
    """The canonical zoom-call turn."""
    return VISIONTHINK_ZOOM.call_text(think, ZOOM.name, {"box": box})


def zoom_env(item):
    environment = grpo_env.environment_for(VISIONTHINK_ZOOM, GRID)
    views = make_views(item.image, GRID)
    env = environment()
    env.reset(high_res_image=views.high, image=views.low, question=item.question)
    return env, views


def test_zoom_environment_schemas_are_the_profiles():
    """TRL's tools are the environment's public methods: `resize_image` and `zoom_image` in the profile's order, each
    rendered with the profile's schema (key order too); the default environment is unchanged."""
    environment = grpo_env.environment_for("visionthink-zoom", GRID)
    assert grpo_env.tool_methods(environment) == ["resize_image", "zoom_image"]
    tools = grpo_env.environment_tools(environment)
    assert tools == VISIONTHINK_ZOOM.template_tools() == [RESIZE.schema, ZOOM.schema]
    assert json.dumps(tools) == json.dumps([RESIZE.schema, ZOOM.schema])
    default = grpo_env.environment_for(None)
    assert grpo_env.tool_methods(default) == ["resize_image"]
    assert grpo_env.environment_tools(default) == [RESIZE.schema]
    with pytest.raises(ValueError, match="pixel grid"):
        grpo_env.environment_for("visionthink-zoom")


def test_zoom_environment_answers_as_the_profile():
    item = synth.split_items("train", 1)[0]
    env, views = zoom_env(item)
    box = [4, 6, 30, 28]
    assert env.zoom_image(box=box) == protocol.tool_turn(ZOOM, zoom_crop(tuple(box), views, GRID))["content"]
    assert env.returned_images[0].tobytes() == zoom_crop(tuple(box), views, GRID).tobytes()
    assert env.resize_image(action="resize")[0]["text"].startswith("Error:")  # one tool call per rollout
    assert env.zoom_image(box=box)[0]["text"].startswith("Error:")
    env, views = zoom_env(item)
    assert env.resize_image(action="resize") == protocol.tool_turn(RESIZE, views.high)["content"]
    assert env.zoom_image(box=box)[0]["text"].startswith("Error:")
    width, height = views.low.size
    bad = {"outside": [width + 5, 0, width + 20, 10], "inverted": [20, 20, 10, 30], "arity": [1, 2, 3],
           "text": "[1, 2, 3, 4]", "nan": [float("nan"), 0, 10, 10], "strings": ["1", "2", "3", "4"], "missing": None}
    for name, value in bad.items():
        env, _ = zoom_env(item)
        reply = env.zoom_image() if value is None else env.zoom_image(box=value)
        assert len(reply) == 1 and reply[0]["text"].startswith("Error:"), name
        assert env.returned_images == []
    env, _ = zoom_env(item)
    outside = env.zoom_image(box=bad["outside"])
    assert outside == VISIONTHINK_ZOOM.error_turn(check_box(bad["outside"], (width, height))[1])["content"]


def test_rollout_episode_checks_zoom_boxes_against_the_view(random_tiny):
    """A zoom call whose box lies wholly outside the low view is malformed in the episode, as in the loop."""
    _, processor = random_tiny
    tokenizer = processor.tokenizer
    item = synth.split_items("train", 1)[0]
    views = make_views(item.image, processor.grid)
    prompt = VISIONTHINK_ZOOM.first_turn(item.question, views.low)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    kinds = []
    for box in ([2, 2, 20, 20], [views.low.width + 4, 0, views.low.width + 30, 20]):
        ids = tokenizer.encode(zoom_text(THINK, box), add_special_tokens=False) + [end]
        episode = grpo_env.rollout_episode(processor, prompt, [{"role": "assistant", "content": ""}], ids,
                                           views.high, protocol_profile=VISIONTHINK_ZOOM)
        kinds.append(episode.turns[0].kind)
    assert kinds == ["zoom", "malformed"]
    with pytest.raises(ValueError, match="high_res_image"):  # without it, a crop could pass for the full view
        grpo_env.rollout_episode(processor, prompt, [{"role": "assistant", "content": ""}], ids,
                                 protocol_profile=VISIONTHINK_ZOOM)


def grpo_recipe(tmp_path, model_dir, **overrides):
    """`grpo_scripted.recipe` under `visionthink-zoom` with the cost penalty."""
    from grpo_scripted import recipe  # tests/ is on sys.path

    return recipe(tmp_path, model_dir, **{"protocol": "visionthink-zoom", "penalty_variant": "cost",
                                          "cost_weight": 0.1, **overrides})


def test_grpo_config_accepts_the_cost_penalty(tmp_path, tiny_dir):
    from visionthink.recipes import load_recipe
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    config = grpo_recipe(tmp_path, tiny_dir, cost_weight=0.0)
    assert config.penalty_variant == "cost" and config.cost_weight == 0.0
    with pytest.raises(ValueError, match="cost_weight"):
        grpo_recipe(tmp_path, tiny_dir, cost_weight=-1.0)
    zoom = load_recipe("recipes/tiny-synth.yaml", "grpo_zoom", VisionThinkGRPOConfig)
    assert (zoom.protocol, zoom.penalty_variant, zoom.cost_weight) == ("visionthink-zoom", "cost", 0.1)
    assert zoom.output_dir.startswith("runs/") and zoom.export_dir == "checkpoints/tiny-synth-zoom"  # demo's zoom model
    assert zoom.box_anchor_weight > 0
    assert zoom.model == load_recipe("recipes/tiny-synth.yaml", "sft_zoom_read", __import__(
        "visionthink.train.sft", fromlist=["SFTConfig"]).SFTConfig).output_dir + "/final"
    assert load_recipe("recipes/tiny-synth.yaml", "grpo", VisionThinkGRPOConfig).penalty_variant == "paper"


def test_zoom_trained_ids_are_the_profile_rendering(tmp_path, tiny_dir):
    """Scripted zoom, resize, direct and wrong rollouts in one group under `visionthink-zoom`: TRL's prompt and
    completion ids are `tokens.encode` of the episode in the zoom profile (the schemas rendered are the
    profile's), the loss mask is the assistant mask, the episodes record the zoom and its crop, and the `cost`
    penalty is `rewards.cost_penalties` of the episodes' visual costs."""
    from grpo_scripted import capture_rewards, script_turns, trained_episodes  # tests/ is on sys.path

    from visionthink.rewards.rewards import cost_penalties, visual_cost
    from visionthink.train.grpo import build_trainer

    trainer = build_trainer(grpo_recipe(tmp_path, tiny_dir))
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    from transformers.utils import get_json_schema

    rendered_tools = [tool if isinstance(tool, dict) else get_json_schema(tool) for tool in trainer.tools]
    assert rendered_tools == [RESIZE.schema, ZOOM.schema]  # what TRL passes to the chat template
    box = [3, 5, 31, 33]
    first = {0: zoom_text(THINK, box), 1: VISIONTHINK_ZOOM.call_text(THINK, RESIZE.name, {"action": "resize"})}

    def answer_for(row):
        return protocol.answer_text(THINK, "dots" if row == 3 else "checker")

    recorded = script_turns(trainer, tokenizer, lambda i: first.get(i, answer_for(i)), answer_for)
    rewards_seen = capture_rewards(trainer, "checker")
    trainer.train()

    low = protocol.images_in(recorded[0][0][0])[0]
    row = next(r for r in trainer.train_dataset if r["image"].tobytes() == low.tobytes())  # the group's item
    views = Views(low=low, high=row["high_res_image"])
    episodes = trained_episodes(processor, recorded[0], views.high, VISIONTHINK_ZOOM)
    assert len(episodes) == 4 and all(e.well_formed for e in episodes)
    assert [e.action for e in episodes] == ["zoom", "resize", "answer", "answer"]
    zoomed = episodes[0]
    assert tuple(zoomed.zoom_box) == tuple(float(v) for v in box)
    crop = protocol.images_in(zoomed.messages)[-1]
    assert crop.tobytes() == zoom_crop(tuple(box), views, processor.grid).tobytes()
    assert zoomed.visual_tokens_per_turn[-1] == processor.grid.tokens(*crop.size)
    got = rewards_seen[0]
    assert got[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    costs = [visual_cost(e) for e in episodes]
    expected = cost_penalties([True, True, True, False], [True, True, False, False], costs, [0] * 4, cost_weight=0.1)
    assert got[:, 2].tolist() == pytest.approx([-p for p in expected])
    assert expected[0] < expected[1]  # the zoom pays less than the resize (r = 1/3 >= theta: both pay Eq. 5)
    history = trainer.rewards.history[-1]
    assert history["zoom_ratio"] == 0.25 and history["tool_ratio"] == 0.5


@pytest.mark.slow
def test_train_grpo_zoom_smoke(tmp_path, tiny_dir):
    """Two GRPO steps end to end under `visionthink-zoom` with the cost penalty: the first turn is scripted to zoom
    (a random model would not), the second is sampled with the crop in context; checkpoints and zoom logs appear."""
    from grpo_scripted import train_scripted


    config = grpo_recipe(tmp_path, tiny_dir, max_steps=2, num_generations=2, per_device_train_batch_size=4,
                         save_total_limit=1, box_anchor_weight=1.0, anchor_batch_size=2)
    call = zoom_text(THINK, [0, 0, 28, 28])
    final, trainer, recorded = train_scripted(config, lambda i: call if i % 2 == 0 else None, lambda i: None)
    run = tmp_path / "run"
    assert (final / "config.json").is_file() and (run / "checkpoint-2" / "model.safetensors").is_file()
    assert trainer.state.global_step == 2
    for _prompts, out in recorded:
        completions, tool_images = out[3], out[7]
        zoomed = [i for i, c in enumerate(completions) if any(m.get("name") == "zoom_image" for m in c)]
        assert zoomed and all(tool_images[i] and tool_images[i][0].size == (56, 56) for i in zoomed)
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "rewards/accuracy/mean" in r]
    assert len(steps) == 2
    for name in ("zoom_ratio", "tool_ratio", "visual_cost/mean", "zoom/crop_tokens", "rewards/resize_penalty/mean"):
        assert name in steps[0]
    assert steps[0]["zoom_ratio"] > 0 and steps[0]["zoom/crop_tokens"] == 4.0
    assert all(step["box_anchor/loss"] > 0 for step in steps)  # the box anchor ran in every step


def test_box_anchor_needs_the_zoom_profile(tmp_path, tiny_dir):
    from visionthink.train.grpo import build_trainer

    with pytest.raises(ValueError, match="zoom_image"):
        build_trainer(grpo_recipe(tmp_path, tiny_dir, protocol="visionthink", penalty_variant="paper",
                                  box_anchor_weight=1.0))


@pytest.mark.slow
def test_box_anchor_teaches_the_true_box_and_leaves_the_decision_alone(tiny_dir):
    """The anchor's call is the zoom on the label's true box under the zoom prompts; its loss is finite however
    strongly the model favours `<tool_call>` (which carries no loss), and a few steps on it lower it on other scenes."""
    from grpo_scripted import with_and_without_favour

    from visionthink.models import load_model
    from visionthink.train.grpo_anchor import BoxAnchor, box_anchor_loss, box_anchor_messages
    from visionthink.train.sft_data import label_zoom_box

    model, processor = load_model(tiny_dir, dtype=torch.float32)
    rng = np.random.default_rng(5)
    scene = synth.make_scene(np.random.default_rng(5))
    messages = box_anchor_messages(rng, processor.grid)
    turn = VISIONTHINK_ZOOM.parse_turn(messages[-1]["content"][0]["text"])
    assert turn.kind == "zoom" and tuple(turn.box) == label_zoom_box(scene, make_views(scene.image, processor.grid))
    held_out = [box_anchor_messages(np.random.default_rng(100 + i), processor.grid) for i in range(4)]
    tool_call = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    before, favouring_the_call = with_and_without_favour(
        model, tool_call, 50.0, lambda: box_anchor_loss(model, processor, held_out))
    assert torch.isfinite(before) and abs(before.item() - favouring_the_call.item()) < 1e-4
    anchor = BoxAnchor(processor, 1.0, batch_size=4, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(10):
        optimizer.zero_grad()
        anchor(model).backward()
        optimizer.step()
    with torch.no_grad():
        assert box_anchor_loss(model, processor, held_out).item() < 0.8 * before.item()
