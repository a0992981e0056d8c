"""Smaller training parts: recipe typing, the SFT stage-2 mask and start, the GRPO perception anchor."""

from __future__ import annotations

import json

import pytest
import torch

from visionthink.errors import VisionThinkError
from visionthink.recipes import load_recipe
from visionthink.tokens import IGNORE_INDEX
from visionthink.train.grpo_config import VisionThinkGRPOConfig
from visionthink.train.sft import SFTConfig, train_sft
from visionthink.train.sft_data import decision_position, mask_first_turn, sample_example


def test_recipe_numbers_take_their_field_types():
    recipe = load_recipe(None, "grpo", VisionThinkGRPOConfig,
                         ["learning_rate=3e-5", "beta=1", "max_steps=12", "export_dir=null"])
    assert recipe.learning_rate == 3e-5 and isinstance(recipe.learning_rate, float)  # YAML reads 3e-5 as a string
    assert recipe.beta == 1.0 and isinstance(recipe.beta, float)
    assert recipe.max_steps == 12 and recipe.export_dir is None
    with pytest.raises(VisionThinkError, match="learning_rate: expected float"):
        load_recipe(None, "grpo", VisionThinkGRPOConfig, ["learning_rate=fast"])
    with pytest.raises(VisionThinkError, match="max_steps: expected int"):
        load_recipe(None, "grpo", VisionThinkGRPOConfig, ["max_steps=2.5"])


def test_mask_first_turn_masks_only_the_first_trained_run():
    x = IGNORE_INDEX
    labels = torch.tensor([x, x, 5, 6, 7, x, x, 8, 9])
    assert mask_first_turn(labels).tolist() == [x, x, x, x, x, x, x, 8, 9]
    assert labels.tolist()[2] == 5  # the input is not modified
    assert mask_first_turn(torch.tensor([x, x])).tolist() == [x, x]


def test_decision_position_is_the_token_before_the_first_turns_choice(random_tiny):
    """Its logits choose `<answer>` or `<tool_call>` in the FIRST assistant turn (the user turn also names
    `<answer>`, and a resized conversation has a second `<answer>`)."""
    import numpy as np

    from visionthink.tokens import encode_for_training

    _, processor = random_tiny
    tokenizer = processor.tokenizer
    decision_ids = tokenizer.convert_tokens_to_ids(["<answer>", "<tool_call>"])
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(12):
        example = sample_example(rng, processor.grid, 0.5, 0.0)
        encoding = encode_for_training(processor, example.messages)
        labels, ids = encoding["labels"][0], encoding["input_ids"][0].tolist()
        position = decision_position(labels, decision_ids)
        chosen = tokenizer.convert_ids_to_tokens(ids[position + 1])
        assert chosen == ("<tool_call>" if example.resized else "<answer>")
        assert tokenizer.decode(ids[: position + 1]).endswith("</think>\n")
        assert (labels[position + 1 :] != IGNORE_INDEX).any()
        assert ids.index(decision_ids[0]) < position  # the user turn's mention of <answer> comes earlier
        seen.add(example.resized)
    assert seen == {True, False}


def test_only_small_labels_at_low_res_are_illegible(random_tiny):
    import numpy as np

    _, processor = random_tiny
    rng = np.random.default_rng(0)
    examples = [sample_example(rng, processor.grid, 0.5, 0.25) for _ in range(200)]
    for e in examples:
        assert e.legible == (e.start == "high" or e.family != "fine_small")
    assert any(not e.legible for e in examples) and any(e.legible for e in examples)


def test_label_token_says_whether_the_view_resolves_the_pattern(random_tiny):
    """Small labels: illegible at low res (pattern target ignored), legible at full res; large: legible at both."""
    import numpy as np

    from visionthink.data import synth
    from visionthink.train.sft_data import aux_targets

    _, processor = random_tiny
    for size, legible_low in (("small", 0), ("large", 1)):
        scene = synth.make_scene(np.random.default_rng(5), label_size=size, size=(168, 112))
        scene.label_box = (126, 70, 154, 98)  # one token at low res (84x56 view: 3x2 tokens), four at full res
        at_low, at_high = (aux_targets(scene, side, processor.grid) for side in ((84, 56), (168, 112)))
        assert at_low["legible"].tolist() == [IGNORE_INDEX] * 5 + [legible_low]  # token (row 1, col 2)
        assert (at_low["pattern"][5] != IGNORE_INDEX) == bool(legible_low)
        graded = (at_high["legible"] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert graded == [16, 17, 22, 23]  # the 2x2 tokens under the label of the 6x4 full view
        assert (at_high["legible"][graded] == 1).all()
        assert (at_high["pattern"][graded] == synth.PATTERNS.index(scene.pattern)).all()


def test_sft_second_stage_starts_from_the_given_model(tmp_path, random_tiny, tiny_dir):
    model, processor = random_tiny
    config = SFTConfig(init_from=str(tiny_dir), output_dir=str(tmp_path / "run"), steps=2, batch_size=4,
                       learning_rate=1e-4, warmup_steps=1, save_every=2, eval_every=2, eval_items=6, threads=1,
                       mask_illegible_first_turns=True, legibility_weight=1.0)
    final = train_sft(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= row["legibility_acc"] <= 1.0 for row in log)
    from visionthink.models import load_model

    trained, trained_processor = load_model(final, device="cpu")
    assert trained_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    before, after = model.state_dict(), trained.state_dict()
    changes = [(after[k].float() - before[k].float()).abs().max().item() for k in before]
    assert 0 < max(changes) < 0.01  # two small steps away from the start, not a fresh model


@pytest.mark.slow
def test_sft_resumes_from_the_newest_complete_checkpoint(tmp_path, tiny_dir):
    """A second run with more steps goes on from the last complete save, passing over a folder whose save
    a kill cut short (no trainer_state.pt, which is written last), and logs only the steps left."""
    run = tmp_path / "run"
    base = dict(init_from=str(tiny_dir), output_dir=str(run), batch_size=4, learning_rate=1e-4, warmup_steps=1,
                save_every=1, eval_every=100, eval_items=6, threads=1)
    train_sft(SFTConfig(steps=2, **base))
    (run / "checkpoint-3").mkdir()
    (run / "checkpoint-3" / "config.json").write_text("{}")
    train_sft(SFTConfig(steps=4, **base))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_anchor_loss_leaves_the_resize_decision_alone(random_tiny):
    """The anchor's softmax excludes `<tool_call>`: changing that token's logit row changes nothing."""
    from grpo_scripted import with_and_without_favour

    from visionthink.data import synth
    from visionthink.images import make_views
    from visionthink.train.grpo_anchor import anchor_loss

    model, processor = random_tiny
    items = synth.split_items("train", 3)
    rows = [{"question": i.question, "answer": i.answer, "image": make_views(i.image, processor.grid).low}
            for i in items]
    tool_call = processor.tokenizer.convert_tokens_to_ids("<tool_call>")

    first, second = with_and_without_favour(model, tool_call, 50.0, lambda: anchor_loss(model, processor, rows))
    assert torch.isfinite(first) and abs(first.item() - second.item()) < 1e-5


def test_sft_refuses_a_multi_process_launch(tmp_path, monkeypatch):
    """Under `torchrun`/`accelerate launch` every process would train and write the same folders."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VisionThinkError, match="one process"):
        train_sft(SFTConfig(output_dir=str(tmp_path / "run"), steps=1))
    assert not (tmp_path / "run").exists()


def test_shared_prefix_forward_equals_the_plain_forward(random_tiny):
    """SFT's speed-up computes the common system prompt once; logits, loss and gradients must not change."""
    import numpy as np
    import torch

    from visionthink.tokens import collate, encode_for_training
    from visionthink.train.sft_data import sample_example
    from visionthink.train.shared_prefix import forward_with_shared_prefix

    model, processor = random_tiny
    rng = np.random.default_rng(0)
    examples = [sample_example(rng, processor.grid, 0.5, 0.25) for _ in range(6)]
    batch = collate(processor, [encode_for_training(processor, e.messages) for e in examples])
    plain = model(**batch)
    plain_grads = torch.autograd.grad(plain.loss, list(model.parameters()), allow_unused=True)
    shared, prefix = forward_with_shared_prefix(model, batch)
    shared_grads = torch.autograd.grad(shared.loss, list(model.parameters()), allow_unused=True)
    assert prefix > 100  # the system prompt and tool block, up to the first image
    assert batch["input_ids"][0, prefix - 1] != model.config.vision_start_token_id
    torch.testing.assert_close(shared.logits, plain.logits[:, prefix:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.loss, plain.loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(plain_grads, shared_grads, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_perception_examples_are_short_legible_and_without_the_tool_block(random_tiny):
    import numpy as np

    from visionthink.tokens import encode_for_training, render_text
    from visionthink.train.sft_data import sample_example

    _, processor = random_tiny
    rng = np.random.default_rng(2)
    examples = [sample_example(rng, processor.grid, 0.5, 0.5, perception=True) for _ in range(40)]
    assert all(e.legible and not e.resized and not e.with_tools for e in examples)
    assert all(e.start == "high" for e in examples if e.family == "fine_small")
    assert {e.start for e in examples if e.family != "fine_small"} == {"low", "high"}
    for e in examples[:5]:
        text = render_text(processor, e.messages, with_tools=False)
        assert "<tools>" not in text and "resize_image" not in text
        assert len(encode_for_training(processor, e.messages, with_tools=False)["input_ids"][0]) < 80
