"""Region zoom (issue 12) wired into training: SFT renders each example in its own profile, GRPO's environment
serves `zoom_image` with the profile's schema and crop, rollouts record zoom actions, the `cost` penalty runs."""

from __future__ import annotations

import json

import numpy as np
import torch

from visionthink import protocol
from visionthink.profiles import VISIONTHINK_ZOOM
from visionthink.tokens import IGNORE_INDEX, assistant_mask, encode, encode_for_training, render_text

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
    assert json.dumps(protocol.ZOOM_TOOL) in text and protocol.ZOOM_USER_INSTRUCTION in text
    trained_text = processor.tokenizer.decode(ids[mask])
    assert protocol.ZOOM_TOOL_NAME in trained_text  # the zoom call (with the label box) is trained on
    default = encode_for_training(processor, example.messages)
    assert default["input_ids"].tolist() == encode(processor, example.messages)["input_ids"].tolist()
    assert json.dumps(protocol.ZOOM_TOOL) not in render_text(processor, example.messages)


def test_sft_with_zoom_fraction_trains_on_the_zoom_rendering(tmp_path, random_tiny, monkeypatch):
    """Two SFT steps with `zoom_fraction` > 0: every protocol example is encoded in its own profile, the zoom
    conversations' trained ids are the `visionthink-zoom` rendering, and validation reports the zoom prompts."""
    from visionthink.train import sft
    from visionthink.train.sft import SFTConfig, train_sft

    model, processor = random_tiny
    start = tmp_path / "start"
    model.save_pretrained(start)
    processor.save_pretrained(start)
    seen = []
    real = sft.encode_for_training

    def recording(proc, messages, with_tools=True, protocol=None):
        batch = real(proc, messages, with_tools, protocol=protocol)
        seen.append((messages, protocol, batch["input_ids"][0].tolist()))
        return batch

    monkeypatch.setattr(sft, "encode_for_training", recording)
    config = SFTConfig(init_from=str(start), output_dir=str(tmp_path / "run"), steps=2, batch_size=8,
                       learning_rate=1e-4, warmup_steps=1, save_every=2, eval_every=2, eval_items=4, threads=1,
                       resize_fraction=1.0, full_res_fraction=0.0, zoom_fraction=1.0)
    final = train_sft(config)
    assert (final / "config.json").is_file()
    assert len(seen) == 16 and all(p == "visionthink-zoom" for _, p, _ in seen)
    zoomed = [(messages, ids) for messages, _, ids in seen
              if any(m["role"] == "tool" and m.get("name") == protocol.ZOOM_TOOL_NAME for m in messages)]
    assert zoomed  # label questions zoom (zoom_fraction 1), coarse ones resize
    for messages, ids in zoomed:
        assert ids == encode(processor, messages, protocol=VISIONTHINK_ZOOM)["input_ids"][0].tolist()
        assert ids != encode(processor, messages)["input_ids"][0].tolist()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(key.startswith("val_zoom_heldout/low/") for key in log[-1])


def test_sft_zoom_recipe_section_loads():
    from visionthink.recipes import load_recipe
    from visionthink.train.sft import SFTConfig

    zoom = load_recipe("recipes/tiny-synth.yaml", "sft_zoom", SFTConfig)
    assert zoom.zoom_fraction > 0 and zoom.init_from
    assert not str(zoom.output_dir).startswith("checkpoints")
    assert zoom.export_dir is None or zoom.export_dir not in ("checkpoints/tiny-synth", "checkpoints/tiny-synth-sft")
    for section in ("sft_perception", "sft", "sft_refresh"):
        assert load_recipe("recipes/tiny-synth.yaml", section, SFTConfig).zoom_fraction == 0.0
