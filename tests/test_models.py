"""The tiny tokenizer and model: Qwen's special tokens, lossless text, short protocol lines, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from visionthink import protocol
from visionthink.data import synth
from visionthink.errors import ModelError
from visionthink.images import make_views
from visionthink.models import TinyModelConfig, chat_template, load_model
from visionthink.models.patch_embed import use_linear_patch_embed
from visionthink.models.processor import QWEN_SPECIAL_TOKENS
from visionthink.profiles import VISIONTHINK
from visionthink.tokens import encode, render_text
from visionthink.tools import RESIZE
from visionthink.train.sft_data import conversation


@pytest.fixture(scope="module")
def tiny_tokenizer(random_tiny):
    """The tokenizer `train sft` builds: BPE trained on `tokenizer_corpus()` (conftest's `random_tiny`)."""
    return random_tiny[1].tokenizer


def resize_conversation(processor, index: int = 1) -> list[protocol.Message]:
    item = synth.make_item(3, index)
    views = make_views(item.image, processor.grid)
    return conversation(item.question, item.answer, views, "low", resize=True)


def test_qwen_special_tokens_come_first_in_qwen_order(tiny_tokenizer):
    assert len(QWEN_SPECIAL_TOKENS) == 22
    assert tiny_tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(22))
    assert tiny_tokenizer.convert_ids_to_tokens(list(range(22))) == list(QWEN_SPECIAL_TOKENS)
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.eos_token_id == 2
    assert tiny_tokenizer.pad_token == "<|endoftext|>" and tiny_tokenizer.pad_token_id == 0
    # Each special token stays one token inside running text.
    for index, token in enumerate(QWEN_SPECIAL_TOKENS):
        ids = tiny_tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert ids.count(index) == 1, token


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=60))
@example(text="你好，世界！ 😀👍🏽 café e\u0301 \x00\t\r\n  ")
@example(text="<|im_start|>user\n<think>x</think><|im_end|>\n")
@example(text="def f(x):\n    return x ** 2  # ünïcödé\n")
def test_tiny_tokenizer_encodes_any_text_losslessly(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < len(tiny_tokenizer) for i in ids)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_answer_tags_stay_apart_from_the_answer(tiny_tokenizer):
    """The first token of a direct answer is `<answer>` whatever the answer, and every canonical answer
    is then one token of its own: the decision (answer or resize) and the reading are separate softmaxes."""
    opening = tiny_tokenizer.convert_tokens_to_ids("<answer>")
    closing = tiny_tokenizer.convert_tokens_to_ids("</answer>")
    assert opening != tiny_tokenizer.unk_token_id and closing != tiny_tokenizer.unk_token_id
    answers = [*synth.COLOURS, *synth.SHAPES, "1", "2", "3", *synth.PATTERNS]
    for answer in answers:
        ids = tiny_tokenizer.encode(f"<think>Read the pattern on the label.</think>\n<answer>{answer}</answer>",
                                    add_special_tokens=False)
        assert ids[-3] == opening and ids[-1] == closing, answer
        assert tiny_tokenizer.decode(ids[-2:-1]) == answer


def _pieces(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's character span (the rendering is ASCII, so spans are exact)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    spans, position = [], 0
    for token in ids:
        piece = tokenizer.decode([token], skip_special_tokens=False)
        spans.append((position, position + len(piece)))
        position += len(piece)
    assert position == len(text)
    return ids, spans


def _tokens_covering(spans, text: str, needle: str) -> int:
    start = text.index(needle)
    end = start + len(needle)
    return sum(1 for a, b in spans if a < end and b > start)


def test_no_protocol_line_or_question_is_one_token(random_tiny):
    _, processor = random_tiny
    text = render_text(processor, resize_conversation(processor))
    ids, spans = _pieces(processor.tokenizer, text)
    lines = [json.dumps(RESIZE.schema), protocol.USER_INSTRUCTION, RESIZE.response_text,
             VISIONTHINK.call_json, protocol.SYSTEM_PROMPT, "Read the pattern on the label."]
    for line in lines:
        assert line in text
        assert _tokens_covering(spans, text, line) >= len(line.split()), line  # at least a token a word
    for question in (synth.QUESTIONS["pattern"], "label pattern?", "WHICH PATTERN DOES THE TAG SHOW"):
        assert len(processor.tokenizer.tokenize(question)) >= len(question.split())


def test_unseen_wordings_map_to_the_tokens_of_their_words(random_tiny):
    """Merges stay inside words: a held-out wording is the trained words' tokens in a new order."""
    tokenizer = random_tiny[1].tokenizer
    trained = {t for q in synth.QUESTION_TYPES for w in synth.wordings(q, "train") for t in tokenizer.tokenize(w)}
    held = [t for q in synth.QUESTION_TYPES for w in synth.wordings(q, "heldout") for t in tokenizer.tokenize(w)]
    unseen = [t for t in held if t not in trained]
    assert len(unseen) <= 0.02 * len(held), sorted(set(unseen))  # only the odd word at a sentence's start
    ids = tokenizer.encode("Which pattern is on the sticker?", add_special_tokens=False)
    assert tokenizer.encode("What pattern is on the sticker?", add_special_tokens=False)[1:] == ids[1:]


def test_tiny_model_shapes(random_tiny):
    model, processor = random_tiny
    config = model.config
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.vocab_size % 64 == 0 and text.vocab_size >= len(processor.tokenizer)
    tokenizer = processor.tokenizer
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert processor.grid.tokens(112, 112) == 16 and processor.grid.tokens(56, 56) == 4
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert TinyModelConfig().max_pixels == 168 * 112 and TinyModelConfig().min_pixels == 28 * 28


def test_save_load_round_trip_gives_identical_logits(random_tiny, tiny_dir):
    model, processor = random_tiny
    loaded, loaded_processor = load_model(tiny_dir)
    use_linear_patch_embed(model)  # as load_model does (equal up to rounding; tested below)
    assert loaded_processor.chat_template == chat_template()
    assert loaded_processor.grid == processor.grid
    assert not loaded.training

    messages = resize_conversation(processor)
    batch = encode(processor, messages)
    again = encode(loaded_processor, messages)
    assert batch["input_ids"].tolist() == again["input_ids"].tolist()
    assert torch.equal(batch["pixel_values"], again["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], again["image_grid_thw"])

    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                          "image_grid_thw")}
    with torch.no_grad():
        before = model(**inputs).logits
        after = loaded(**inputs).logits
    assert before.shape[1] == batch["input_ids"].shape[1]
    assert torch.equal(before, after)


def test_load_model_refuses_missing_or_broken_folders(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path)  # exists, but holds no config.json
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(tmp_path)


def test_structured_tool_calls_render_like_the_protocols_inline_text(random_tiny):
    """TRL renders tool calls from `tool_calls`; the model writes them inline: both must be the same tokens."""
    from PIL import Image

    from visionthink import protocol
    from visionthink.tokens import render_text

    _, processor = random_tiny
    image = Image.new("RGB", (56, 56))
    inline = protocol.first_turn("q", image) + [
        protocol.assistant_turn(VISIONTHINK.call_text("Look.", RESIZE.name, {"action": "resize"}))]
    call = {"type": "function", "function": {"name": RESIZE.name, "arguments": {"action": "resize"}}}
    structured = protocol.first_turn("q", image) + [
        {"role": "assistant", "content": [protocol.text_part("<think>Look.</think>")], "tool_calls": [call]}
    ]
    assert render_text(processor, structured) == render_text(processor, inline)


def test_linear_patch_embed_equals_the_convolution(random_tiny):
    """The patch embedding runs as `F.linear` on the conv's own weight: same outputs, gradients reach it."""
    import copy

    import torch

    model = copy.deepcopy(random_tiny[0])
    embed = model.model.visual.patch_embed
    patches = torch.randn(40, embed.proj.weight[0].numel())
    expected = type(embed).forward(embed, patches)  # the upstream Conv3d path
    use_linear_patch_embed(model)
    got = embed(patches)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()
    assert embed.proj.weight.grad is not None and embed.proj.weight.grad.abs().sum() > 0
    assert set(model.state_dict()) == set(random_tiny[0].state_dict())


@pytest.mark.parametrize("preset", ["tiny", "real-vocab-small"])
def test_the_additive_mask_gives_sdpas_logits_bit_for_bit(preset):
    """Rows of different lengths (padding), a cache carried into a second turn, and decoding: every logit the engine
    reads is the same with the mask made additive once per pass as with upstream's boolean mask."""
    from visionthink.engines.kv_decoder import KVDecoder, SamplingConfig
    from visionthink.engines.transformers_engine import Request, TransformersEngine
    from visionthink.models.additive_mask import NAME
    from visionthink.models.presets import build_preset

    model, processor = build_preset(preset)
    engine = TransformersEngine(model.eval(), processor, SamplingConfig(max_new_tokens=4), batch_size=4,
                                draft_memory=False)
    engine.stop_ids = [-1]  # every row decodes its whole budget, then resizes (oracle)
    assert model.config.text_config._attn_implementation == NAME
    items = synth.split_items("test", 4, seed=5)
    requests = [Request(item.image, item.question + " and" * i, True) for i, item in enumerate(items)]
    read: dict[str, list[torch.Tensor]] = {}
    feed, prefill = KVDecoder._feed_tokens, KVDecoder.prefill
    for implementation in (NAME, "sdpa"):
        model.set_attn_implementation({"text_config": implementation})
        logits = read[implementation] = []

        def recording_feed(self, feeds, logits=logits):
            logits.append(feed(self, feeds))
            return logits[-1]

        def recording_prefill(self, *args, logits=logits, **kwargs):
            prefill(self, *args, **kwargs)
            logits.append(self.last_logits.clone())

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(KVDecoder, "_feed_tokens", recording_feed)
            patch.setattr(KVDecoder, "prefill", recording_prefill)
            episodes = engine.run(requests, "oracle")
        assert all(e.resized for e in episodes)
    assert len(read[NAME]) == len(read["sdpa"]) >= 2 + 3  # two prefills (low, then high), the decode steps
    assert all(torch.equal(a, b) for a, b in zip(read[NAME], read["sdpa"], strict=True))
