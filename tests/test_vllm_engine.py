"""The vLLM engine at vLLM's API boundary: a stand-in `vllm` module (tests/fake_vllm) records what it is given."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from visionthink.data import synth
from visionthink.engines.base import Request, never_write_ids
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.vllm_engine import VLLMEngine
from visionthink.errors import ModelError, VisionThinkError
from visionthink.models.processor import VisionThinkProcessor, chat_template
from visionthink.profiles import get_profile
from visionthink.protocol import images_in
from visionthink.tokens import render_text

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm" / "vllm" / "__init__.py"
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stand-in module as `vllm` (also where a real vLLM is installed)."""
    spec = importlib.util.spec_from_file_location("vllm", FAKE_VLLM)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vllm", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def processor(shipped_model_dir):
    """The folder's processor rendering with the project's template, built here rather than by the engine."""
    processor = VisionThinkProcessor.from_pretrained(str(shipped_model_dir))
    processor.chat_template = chat_template()
    return processor


def ids(processor, *tokens: str) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def request(needs_high_res: bool = True) -> Request:
    return Request(Image.new("RGB", (168, 112), "white"), "What pattern is on the label?", needs_high_res)


def test_from_pretrained_passes_the_llm_arguments(fake_vllm, shipped_model_dir, processor):
    engine = VLLMEngine.from_pretrained(shipped_model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.5,
                                        max_model_len=4096, dtype="bfloat16")
    llm, = fake_vllm.instances
    grid = processor.grid
    assert engine.llm is llm
    assert llm.kwargs == {
        "model": str(shipped_model_dir), "enable_prefix_caching": True, "limit_mm_per_prompt": {"image": 2, "video": 0},
        "mm_processor_kwargs": {"min_pixels": grid.min_pixels, "max_pixels": grid.max_pixels},
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 4096, "dtype": "bfloat16",
    }
    assert engine.grid == grid and engine.processor.chat_template == chat_template()


def test_from_pretrained_keeps_other_processor_kwargs_and_refuses_other_bounds(fake_vllm, shipped_model_dir,
                                                                               processor):
    grid = processor.grid
    VLLMEngine.from_pretrained(shipped_model_dir, mm_processor_kwargs={"fps": 1}, enable_prefix_caching=False)
    llm, = fake_vllm.instances
    assert llm.kwargs["mm_processor_kwargs"] == {"fps": 1, "min_pixels": grid.min_pixels,
                                                 "max_pixels": grid.max_pixels}
    assert llm.kwargs["enable_prefix_caching"] is False
    with pytest.raises(VisionThinkError, match="max_pixels"):
        VLLMEngine.from_pretrained(shipped_model_dir, mm_processor_kwargs={"max_pixels": grid.max_pixels * 4})
    with pytest.raises(ModelError, match="no config.json"):
        VLLMEngine.from_pretrained(shipped_model_dir / "missing")


@pytest.mark.parametrize("protocol", ["visionthink", "release"])
def test_an_episode_that_resizes_runs_through_the_stand_in(fake_vllm, shipped_model_dir, processor, protocol):
    profile = get_profile(protocol)
    engine = VLLMEngine.from_pretrained(shipped_model_dir, protocol=protocol)
    llm, = fake_vllm.instances
    if protocol == "release":
        def reply(prompt, params):
            turn = profile.call_text("too small", "resize_image", {"action": "resize"}) \
                if len(prompt["multi_modal_data"]["image"]) == 1 else profile.answer_text("seen", "dots")
            return turn + "<|im_end|>"
        llm.reply = reply
    episode, = engine.run([request()], "visionthink")
    assert episode.resized and episode.answer == "dots" and episode.well_formed
    low, high = images_in(episode.messages)
    assert (low.width * 2, low.height * 2) == high.size == (168, 112)

    first, second = llm.calls
    assert [len(call.prompts) for call in (first, second)] == [1, 1] and not first.use_tqdm
    roles = [m["role"] for m in episode.messages]
    tool_reply = 3  # the high-res image's turn: `tool` here, a `user` turn under the release prompts
    assert roles[:3] == ["system", "user", "assistant"] and len(roles) == 5
    for call, shown, images in ((first, 2, [low]), (second, tool_reply + 1, [low, high])):
        prompt, = call.prompts
        expected = render_text(processor, episode.messages[:shown], add_generation_prompt=True, protocol=profile)
        assert prompt["prompt"] == expected
        assert prompt["prompt"].count(PLACEHOLDER) == len(images) == prompt["prompt"].count("<|image_pad|>")
        assert [im.tobytes() for im in prompt["multi_modal_data"]["image"]] == [im.tobytes() for im in images]
    if protocol == "visionthink":
        assert '"name": "resize_image"' in first.prompts[0]["prompt"].split("<|im_start|>user")[0]  # tools block

    never = never_write_ids(processor.tokenizer)
    vision = ids(processor, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")
    assert set(vision) <= set(never)
    for call, logprobs in ((first, {"logprobs": 0}), (second, {})):  # the first turn's answer confidence
        params, = call.params
        assert params.kwargs == {
            "max_tokens": profile.max_new_tokens, "temperature": 0.0,  # the profile's turn budget: 64, 8192
            "stop_token_ids": ids(processor, "<|im_end|>", "<|endoftext|>"), "skip_special_tokens": False,
            "logit_bias": dict.fromkeys(never, -100.0), **logprobs,
        }


@pytest.mark.parametrize("mode", ["full", "low"])
def test_full_and_low_ban_the_tool_call(fake_vllm, shipped_model_dir, processor, mode):
    engine = VLLMEngine.from_pretrained(shipped_model_dir)
    llm, = fake_vllm.instances
    llm.reply = lambda prompt, params: fake_vllm.ANSWER
    episode, = engine.run([request()], mode)
    assert not episode.resized and episode.answer == "dots"
    call, = llm.calls
    (prompt,), (params,) = call.prompts, call.params
    shown, = prompt["multi_modal_data"]["image"]
    assert shown.size == ((168, 112) if mode == "full" else (84, 56))
    tool_call, = ids(processor, "<tool_call>")
    assert params.logit_bias == dict.fromkeys([*never_write_ids(processor.tokenizer), tool_call], -100.0)


def test_the_oracle_bans_the_call_only_where_the_item_needs_no_resize(fake_vllm, shipped_model_dir, processor):
    engine = VLLMEngine.from_pretrained(shipped_model_dir)
    llm, = fake_vllm.instances
    tool_call, = ids(processor, "<tool_call>")
    llm.reply = lambda prompt, params: fake_vllm.ANSWER if tool_call in params.logit_bias \
        else fake_vllm.scripted_reply(prompt, params)
    needs, fine = engine.run([request(True), request(False)], "oracle")
    assert needs.resized and not fine.resized and needs.answer == fine.answer == "dots"
    first, second = llm.calls
    assert [tool_call in p.logit_bias for p in first.params] == [False, True]
    assert [tool_call in p.logit_bias for p in second.params] == [False]


def test_sampling_reaches_vllm_per_request_and_per_call(fake_vllm, shipped_model_dir):
    sampling = SamplingConfig(max_new_tokens=32, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    engine = VLLMEngine.from_pretrained(shipped_model_dir, sampling=sampling, batch_size=2)
    llm, = fake_vllm.instances
    items = synth.split_items("test", 2, seed=0)
    requests = [Request(item.image, item.question) for item in items]
    engine.run(requests, "low")
    params = llm.calls[-1].params
    assert [(p.max_tokens, p.temperature, p.top_p, p.top_k) for p in params] == [(32, 0.7, 0.9, 5)] * 2
    seeds = [p.seed for p in params]
    assert len(set(seeds)) == 2  # equal prompts would still sample apart
    VLLMEngine.from_pretrained(shipped_model_dir, sampling=sampling).run(requests, "low")
    assert [p.seed for p in fake_vllm.instances[-1].calls[-1].params] == seeds  # reproducible

    engine.run(requests, "low", sampling=SamplingConfig(max_new_tokens=8))
    greedy = llm.calls[-1].params
    assert [(p.max_tokens, p.temperature) for p in greedy] == [(8, 0.0)] * 2
    assert not any(hasattr(p, name) for p in greedy for name in ("seed", "top_p", "top_k"))
    assert engine.sampling is sampling


def test_the_folder_template_is_replaced_by_the_projects(fake_vllm, shipped_model_dir, processor, tmp_path):
    """Qwen2.5-VL's own template has no tools branch: the engine renders with the project's whatever the folder
    ships."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in shipped_model_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, folder / path.name)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n<|im_end|>\n{% endfor %}")
    engine = VLLMEngine.from_pretrained(folder)
    episode, = engine.run([request()], "low")
    prompt = fake_vllm.instances[-1].calls[0].prompts[0]["prompt"]
    assert prompt == render_text(processor, episode.messages[:2], add_generation_prompt=True)
    assert '"name": "resize_image"' in prompt and PLACEHOLDER in prompt


def test_a_missing_vllm_is_one_line(monkeypatch, shipped_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(VisionThinkError, match=r"pip install 'visionthink\[vllm\]'") as error:
        VLLMEngine.from_pretrained(shipped_model_dir)
    assert "\n" not in str(error.value)
