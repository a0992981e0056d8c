"""The real-scale path on CPU: `real-vocab-small` (the real Qwen2.5 vocabulary and Qwen2.5-VL image processor, random
small weights) with the `release` protocol through ask, eval, GRPO with LoRA and the server, on document-sized images.

Random weights: shapes, tokens and plumbing are checked, never answers. Visual tokens are checked against Qwen2.5-VL's
smart-resize rule written out below (qwen-vl-utils / Qwen2VLImageProcessor documentation), not against the code under
test.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from conftest import qwen_smart_resize  # tests/ is on sys.path
from PIL import Image, ImageDraw

from visionthink import protocol
from visionthink.cli import main
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import make_views
from visionthink.models import load_model
from visionthink.profiles import RELEASE
from visionthink.tokens import encode, render_text, visual_tokens


def qwen_tokens(width: int, height: int) -> int:
    """Visual tokens Qwen2.5-VL gives an image of this size: one per 28 x 28 px (14 px patches merged 2 x 2) of its
    smart-resized size."""
    w, h = qwen_smart_resize(width, height)
    return (w // 28) * (h // 28)


def document(width: int, height: int) -> Image.Image:
    """A white page with lines of small print."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row, y in enumerate(range(20, height - 20, 24)):
        draw.text((30, y), f"Item {row:03d} ..... quantity {row % 7} ..... price {row * 3.25:8.2f} EUR", fill="black")
    return image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """`visionthink model init --preset real-vocab-small` (random weights, the real vocabulary)."""
    path = tmp_path_factory.mktemp("real-vocab-small")
    assert main(["model", "init", "--preset", "real-vocab-small", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "page.png"
    document(1280, 960).save(path)
    return path


def test_qwen_arithmetic_by_hand():
    assert qwen_tokens(1280, 960) == 46 * 34  # 1288 x 952
    assert qwen_tokens(640, 480) == 23 * 17
    assert qwen_tokens(3000, 2000) == 107 * 71
    assert qwen_tokens(500, 4000) == 18 * 143


@pytest.mark.parametrize("size", [(1280, 960), (3000, 2000), (500, 4000)])
def test_visual_tokens_equal_smart_resize(loaded, size):
    """The image processor (real settings) gives Qwen's count for the raw image and for both views, and the engine's
    grid counts the views the same; the high view is the processor's own size, the low one about a quarter of it
    (half of the high view under `visionthink`, the original halved under `release`)."""
    _, processor = loaded
    image = document(*size)
    grids = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
    assert visual_tokens(processor, grids) == [qwen_tokens(*size)]
    for halve_original in (False, True):
        views = make_views(image, processor.grid, halve_original=halve_original)
        for view in (views.high, views.low):
            grid = processor.image_processor(images=[view], return_tensors="pt")["image_grid_thw"]
            assert visual_tokens(processor, grid) == [qwen_tokens(*view.size)] == [processor.grid.tokens(*view.size)]
        high, low = qwen_tokens(*views.high.size), qwen_tokens(*views.low.size)
        assert views.high.size == qwen_smart_resize(*size) and high == qwen_tokens(*size)
        half = (size[0] // 2, size[1] // 2) if halve_original else (views.high.width // 2, views.high.height // 2)
        assert low == qwen_tokens(*half)
        assert 0.24 <= low / high <= 0.26


@pytest.mark.slow
def test_ask_full_low_visionthink_with_the_release_protocol(model_dir, page, capsys):
    high, low = qwen_tokens(1288, 952), qwen_tokens(644, 476)
    assert (high, low) == (1564, 391)
    seen = {}
    for mode in ("full", "low", "visionthink"):
        code = main(["--threads", "1", "ask", str(page), "What is the total price?", "--model", str(model_dir),
                     "--mode", mode, "--protocol", "release", "--max-new-tokens", "8", "--json"])
        assert code in (0, 3)  # random weights: an answer or none
        seen[mode] = json.loads(capsys.readouterr().out)
        assert seen[mode]["full_res_visual_tokens"] == high
    assert seen["full"]["visual_tokens"] == high
    assert seen["low"]["visual_tokens"] == low
    assert seen["visionthink"]["visual_tokens"] == (low + high if seen["visionthink"]["resized"] else low)
    assert 0.24 <= seen["low"]["visual_tokens"] / seen["full"]["visual_tokens"] <= 0.26


def test_release_episode_feeds_its_rendering(loaded, page):
    """A forced resize (oracle) on the page: the model read exactly the release rendering of the episode, with both
    images' visual tokens in context."""
    model, processor = loaded
    engine = TransformersEngine(model, processor, SamplingConfig(max_new_tokens=6), protocol="release")
    episode = engine.run([Request(str(page), "What is the total price?", needs_high_res=True)], "oracle")[0]
    assert episode.resized and episode.visual_tokens_per_turn == [391, 1564]
    assert episode.messages[-2] == RELEASE.tool_turn(RELEASE.tool("resize_image"),
                                                     protocol.images_in(episode.messages)[1])
    text = render_text(processor, episode.messages, protocol=RELEASE)
    assert "Here is the image and question:\n<|vision_start|><|image_pad|><|vision_end|>\nWhat is the total" in text
    assert "</tool_call><|im_end|><|im_start|>user\n<tool_response>\nThe resized image is shown below:\n" in text
    # up to the last turn, which the random model wrote (its tokens need not re-encode alike)
    before_last = encode(processor, episode.messages[:-1], add_generation_prompt=True, protocol=RELEASE)
    prefix = before_last["input_ids"][0].tolist()
    assert episode.fed_token_ids[: len(prefix)] == prefix
    assert 0 < episode.generated_tokens <= 12  # two turns of at most 6 (the oracle replaced the first)


def test_eval_on_a_small_fixture(model_dir, tmp_path):
    from visionthink.eval.runner import EvalConfig, run_eval

    config = EvalConfig(model=str(model_dir), benches=["synth"], modes=["full", "low", "oracle"], out=tmp_path / "ev",
                        limit=3, batch_size=3, progress=False, device="cpu", protocol="release", max_new_tokens=8)
    summary = run_eval(config).summary["synth"]
    assert set(summary) == {"full", "low", "oracle"}
    assert 0.24 <= summary["low"]["visual_tokens"] / summary["full"]["visual_tokens"] <= 0.26
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 9


@pytest.mark.slow
def test_two_grpo_steps_with_lora_and_the_release_protocol(model_dir, tmp_path):
    from grpo_scripted import train_scripted  # tests/ is on sys.path

    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    config = VisionThinkGRPOConfig(
        model=str(model_dir), output_dir=str(tmp_path / "run"), max_steps=2, num_generations=2,
        per_device_train_batch_size=2, train_items=4, save_steps=2, threads=1, max_completion_length=256,
        report_to="none", resume=False, drop_tied_groups=False, lora=True, lora_r=4, lora_alpha=8,
        protocol="release",
    )
    call = RELEASE.call_text("The print is small.", "resize_image", {"action": "resize"})
    final, trainer, recorded = train_scripted(config, lambda i: call if i % 2 == 0 else None,
                                              lambda i: RELEASE.answer_text("ok", "7"))
    assert trainer.state.global_step == 2
    assert (final / "config.json").is_file() and (final / "adapter" / "adapter_config.json").is_file()
    processor = trainer.processing_class
    assert processor.chat_template == RELEASE.chat_template
    for prompts, out in recorded:
        completions = out[3]
        text = render_text(processor, [*prompts[0], *completions[0]], protocol=RELEASE)
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call the")
        resized = [c for c in completions if any(m["role"] == "tool" for m in c)]
        assert resized
        tool = next(m for m in resized[0] if m["role"] == "tool")
        assert tool["content"][0]["text"] == "<tool_response>\nThe resized image is shown below:\n"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.state.log_history if "loss" in r)


def test_one_served_request(loaded, page):
    from test_serve import call, serving  # tests/ is on sys.path

    from visionthink.serve.config import ServeConfig

    model, processor = loaded
    engine = TransformersEngine(model, processor, SamplingConfig(max_new_tokens=8), protocol="release")
    url = "data:image/png;base64," + base64.b64encode(page.read_bytes()).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is the total price?"}]}]}
    with serving(engine, ServeConfig(model_name="real-vocab-small", timeout=120)) as server:
        status, reply, _ = call(server.url, "POST", "/v1/chat/completions", body, key=None)
    assert status == 200, reply
    usage = reply["usage"]
    assert usage["full_res_visual_tokens"] == 1564
    assert usage["visual_tokens"] in (391, 391 + 1564)
    assert io.BytesIO(page.read_bytes()).getbuffer().nbytes > 0
