"""The transformers engine: modes, KV reuse across turns, and what the model is fed."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import full_tokens  # tests/ is on sys.path

from visionthink import protocol
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.profiles import VISIONTHINK
from visionthink.tokens import encode
from visionthink.tools import RESIZE


def requests_for(items):
    return [Request(item.image, item.question, item.needs_high_res) for item in items]


@contextmanager
def counted_forwards(model):
    """Inside the block, every forward pass of `model` is counted in the list it yields."""
    calls = []
    original = model.forward
    model.forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        yield calls
    finally:
        del model.forward


def reference_turn(model, processor, messages, max_new_tokens: int, banned: list[int]) -> list[int]:
    """Greedy decoding by full forward passes over the protocol's rendering: no cache at all."""
    batch = encode(processor, messages, add_generation_prompt=True)
    ids, types = batch["input_ids"], batch["mm_token_type_ids"]
    stop = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                           pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits[0, -1]
        logits[banned] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        if token == stop:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        types = torch.cat([types, torch.zeros(1, 1, dtype=types.dtype)], dim=1)
    return out


@pytest.mark.parametrize("mode", ["visionthink", "oracle"])
def test_cached_turns_match_uncached_greedy_decoding(random_tiny, synth_items, mode):
    model, processor = random_tiny
    engine = TransformersEngine(model, processor, SamplingConfig(max_new_tokens=5), batch_size=6)
    episodes = engine.run(requests_for(synth_items[:6]), mode)
    assert any(e.resized for e in episodes) or mode == "visionthink"
    tool_call = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    for item, episode in zip(synth_items[:6], episodes, strict=True):
        assistant_positions = [i for i, m in enumerate(episode.messages) if m["role"] == "assistant"]
        for turn_number, position in enumerate(assistant_positions):
            forced = mode == "oracle" and turn_number == 0 and item.needs_high_res
            if forced:
                continue  # the oracle replaced this turn; the next turn is still checked
            banned = list(engine.never_ids)
            if mode == "oracle" and turn_number == 0 and not item.needs_high_res:
                banned.append(tool_call)
            expected = reference_turn(model, processor, episode.messages[:position], 5, banned)
            text = processor.tokenizer.decode(
                [t for t in expected if t != processor.tokenizer.convert_tokens_to_ids("<|im_end|>")],
                skip_special_tokens=False,
            )
            assert protocol.assistant_text(episode.messages[position]) == text


def test_fed_tokens_equal_the_protocol_rendering(shipped_model, synth_items):
    model, processor = shipped_model
    engine = TransformersEngine(model, processor, batch_size=4)
    for mode in ("visionthink", "oracle", "low", "full"):
        for episode in engine.run(requests_for(synth_items[:8]), mode):
            rendered = encode(processor, episode.messages)["input_ids"][0].tolist()
            assert rendered[-1] == processor.tokenizer.encode("\n")[0]
            assert episode.fed_token_ids == rendered[:-1], mode


def test_modes_spend_the_documented_visual_tokens(shipped_model, synth_items):
    model, processor = shipped_model
    engine = TransformersEngine(model, processor)
    requests = requests_for(synth_items)
    low = engine.run(requests, "low")
    full = engine.run(requests, "full")
    oracle = engine.run(requests, "oracle")
    for item, lo, hi in zip(synth_items, low, full, strict=True):
        tokens = full_tokens(item.image)
        assert not lo.resized and lo.visual_tokens == tokens // 4 and lo.full_res_visual_tokens == tokens
        assert not hi.resized and hi.visual_tokens == tokens
    for item, episode in zip(synth_items, oracle, strict=True):
        tokens = full_tokens(item.image)
        assert episode.resized == item.needs_high_res
        assert episode.visual_tokens == (tokens * 5 // 4 if item.needs_high_res else tokens // 4)
        assert episode.visual_tokens_per_turn == ([tokens // 4, tokens] if item.needs_high_res else [tokens // 4])


def test_batching_does_not_change_answers(shipped_model, synth_items):
    model, processor = shipped_model
    requests = requests_for(synth_items[:9])
    batched = TransformersEngine(model, processor, batch_size=9).run(requests, "visionthink")
    single = TransformersEngine(model, processor, batch_size=1).run(requests, "visionthink")
    assert [e.summary()["turns"] for e in batched] == [e.summary()["turns"] for e in single]


def test_resize_turn_reuses_the_first_turns_cache(shipped_model, synth_items):
    model, processor = shipped_model
    requests = requests_for(synth_items)
    reuse = TransformersEngine(model, processor, reuse_cache=True)
    recompute = TransformersEngine(model, processor, reuse_cache=False)
    with_cache = reuse.run(requests, "oracle")
    without = recompute.run(requests, "oracle")
    assert [e.summary()["turns"] for e in with_cache] == [e.summary()["turns"] for e in without]
    resized = [e for e in with_cache if e.resized]
    assert resized
    # Recomputing feeds the whole first turn again for every resized episode (past the shared system prompt).
    saved = recompute.prefill_tokens - reuse.prefill_tokens
    shared = len(reuse.shared_prefix().ids)
    first_turn_lengths = [len(encode(processor, e.messages[:3])["input_ids"][0]) - shared for e in resized]
    assert saved >= 0.9 * sum(first_turn_lengths)  # all but the re-encoded tail of each first turn


def test_sampling_is_reproducible_with_a_seed(shipped_model, synth_items):
    model, processor = shipped_model
    sampling = SamplingConfig(do_sample=True, temperature=1.5, seed=7)
    greedy = TransformersEngine(model, processor)
    runs = [TransformersEngine(model, processor, sampling).run(requests_for(synth_items), "visionthink"),
            *(greedy.run(requests_for(synth_items), "visionthink", sampling=sampling) for _ in range(2))]
    turns = [[e.summary()["turns"] for e in run] for run in runs]
    assert turns[0] == turns[1] == turns[2]  # per call as from the engine's own seeded sampling
    assert not greedy.sampling.do_sample and greedy.generator is None  # the calls left the engine as it was


def test_unknown_mode_is_refused(random_tiny):
    engine = TransformersEngine(*random_tiny)
    with pytest.raises(ValueError, match="unknown mode"):
        engine.run([], "sideways")


def test_decode_runs_no_forward_pass_on_the_last_tokens(shipped_model, synth_items):
    """Each written token but the last is fed once; the last one waits for the next turn's prefill."""
    from visionthink.engines.kv_decoder import KVDecoder

    model, processor = shipped_model
    engine = TransformersEngine(model, processor)
    messages = protocol.first_turn(synth_items[0].question, synth_items[0].image)
    decoder = KVDecoder(model, engine.pad_id, engine.stop_ids)
    engine.feed(decoder, [messages])
    with counted_forwards(model) as calls:
        written, = decoder.decode(SamplingConfig(max_new_tokens=40), banned_ids=[engine.never_ids])
    assert written[-1] in engine.stop_ids and len(calls) == len(written) - 1
    assert decoder.cached == [len(decoder.history[0]) - 1]


@pytest.mark.parametrize("tail", ["protocol", "wrong after 3", "wrong at once"])
def test_drafted_tool_call_leaves_greedy_turns_unchanged(shipped_model, tail):
    """The call's fixed tail is fed in one pass after `<tool_call>`; a tail the model would not write is cut
    where it departs, so every row's tokens equal plain decoding while the passes drop."""
    from visionthink.data import synth
    from visionthink.engines.kv_decoder import Draft, KVDecoder
    from visionthink.images import make_views

    model, processor = shipped_model
    engine = TransformersEngine(model, processor)
    items = synth.split_items("test", 12, seed=8)
    conversations = [protocol.first_turn(i.question, make_views(i.image, processor.grid).low) for i in items]
    draft = engine.draft
    if tail != "protocol":
        cut = 3 if tail == "wrong after 3" else 0
        draft = Draft(draft.trigger, (*draft.tail[:cut], draft.tail[cut] + 1, *draft.tail[cut + 1 :]))

    def decode(with_draft):
        with counted_forwards(model) as calls:
            decoder = KVDecoder(model, engine.pad_id, engine.stop_ids)
            engine.feed(decoder, conversations)
            sampling = SamplingConfig(max_new_tokens=64)
            written = decoder.decode(sampling, banned_ids=[engine.never_ids] * len(items), draft=with_draft)
        return written, len(calls), decoder

    plain, plain_calls, _ = decode(None)
    drafted, drafted_calls, decoder = decode(draft)
    assert drafted == plain
    calls = [row for row in plain if engine.tool_call_id in row]
    assert calls, "the shipped model resizes some small-label items"
    if tail == "protocol":
        assert drafted_calls < plain_calls - 10
    # what the cache holds is exactly the tokens fed so far, whatever was drafted and dropped
    assert all(decoder.mask[row].sum() == decoder.cached[row] for row in range(len(items)))


def test_batched_encoding_equals_encoding_each_conversation(shipped_model):
    from visionthink.data import synth
    from visionthink.images import make_views
    from visionthink.tokens import encode_batch

    _, processor = shipped_model
    conversations = []
    for index, item in enumerate(synth.split_items("test", 6, seed=2)):
        views = make_views(item.image, processor.grid)
        messages = protocol.first_turn(item.question + " please" * index, views.low)
        if index % 2:
            messages += [protocol.assistant_turn(VISIONTHINK.call_text("look", RESIZE.name, {"action": "resize"})),
                         protocol.tool_turn(RESIZE, views.high)]
        conversations.append(messages)
    for messages, batched in zip(conversations, encode_batch(processor, conversations, True), strict=True):
        single = encode(processor, messages, add_generation_prompt=True)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw", "pixel_values"):
            assert torch.equal(batched[key], single[key]), key


def assert_same_episodes(ours: list, theirs: list) -> None:
    """The same episodes: every field of their records but the time, and the answers' confidence up to rounding (a
    probability read off logits computed in another order: a cached prefix, several tokens in one pass)."""
    def record(episode) -> dict:
        return episode.summary() | {"seconds": 0, "answer_confidence": None}

    assert [record(e) for e in ours] == [record(e) for e in theirs]
    assert [e.answer_confidence for e in ours] == pytest.approx([e.answer_confidence for e in theirs], abs=1e-4)


def test_shared_prefix_is_computed_once_and_changes_nothing(shipped_model, synth_items):
    """Rows start from the system prompt's cache; the episodes equal a run that computes every token, and a
    conversation that departs from the prefix early (another system prompt) is recomputed from there."""
    from visionthink.engines.kv_decoder import KVDecoder

    model, processor = shipped_model
    requests = requests_for(synth_items[:8])
    shared = TransformersEngine(model, processor, batch_size=4)
    alone = TransformersEngine(model, processor, batch_size=4, share_prefix=False)
    for mode in ("full", "visionthink"):
        assert_same_episodes(shared.run(requests, mode), alone.run(requests, mode))
    prefix = shared.shared_prefix()
    assert 100 < len(prefix.ids) < 300 and shared.prefill_tokens < alone.prefill_tokens - 4 * len(prefix.ids)
    other = protocol.first_turn(synth_items[0].question, synth_items[0].image)
    other[0]["content"][0]["text"] = "You are terse."
    for engine in (shared, alone):
        decoder = KVDecoder(model, engine.pad_id, engine.stop_ids, prefix=engine.shared_prefix())
        engine.feed(decoder, [other])
        written, = decoder.decode(SamplingConfig(max_new_tokens=12), banned_ids=[engine.never_ids])
        if engine is shared:
            expected = written
    assert written == expected


def test_second_turn_repeating_the_first_is_guessed_not_decoded(shipped_model, synth_items):
    """While a second turn restates the first turn's tokens, they are fed as a guess and kept where the model
    writes them itself: the episodes are unchanged and the resize turns take fewer forward passes."""
    model, processor = shipped_model
    requests = [Request(i.image, i.question, True) for i in synth_items[:8]]
    runs = {}
    for repeats in (False, True):
        engine = TransformersEngine(model, processor, batch_size=8, draft_repeats=repeats, draft_memory=False)
        with counted_forwards(model) as calls:
            episodes = engine.run(requests, "oracle")
        runs[repeats] = (episodes, len(calls))
    assert_same_episodes(runs[True][0], runs[False][0])
    second = [e.summary() for e in runs[True][0] if len(e.turns) == 2]
    assert second and any(e["turns"][1].split("</think>")[0] == e["turns"][0].split("</think>")[0] for e in second)
    assert runs[True][1] < runs[False][1] - 3


def test_output_memory_guesses_what_earlier_rows_wrote():
    from visionthink.engines.kv_decoder import OutputMemory

    memory = OutputMemory(key=2, span=3)
    assert memory.propose([1, 2], 5, {9}) == []
    memory.learn([7, 1, 2, 3, 4, 9], written=3)  # a turn "3 4 9" written after the prompt "7 1 2"
    assert memory.propose([5, 1, 2], 5, {9}) == [3, 4, 9]
    assert memory.propose([0, 2, 3], 5, {9}) == [4, 9]  # ends at the stop token
    assert memory.propose([1, 2], 1, {9}) == [3]  # no more than the room left
    assert memory.propose([7, 1], 5, {9}) == []  # only the turn is learned, from the `key` tokens before it on
    memory.learn([8, 1, 2, 5, 9], written=2)
    assert memory.propose([1, 2], 5, {9}) == [5, 9]  # the newest continuation wins
    memory.max_keys = 1
    memory.learn([1, 1, 1], written=1)
    assert len(memory.table) == 1  # a full table starts over


def test_output_memory_changes_no_episode_and_saves_forward_passes(shipped_model, synth_items):
    """Later batches get what earlier rows wrote as a guess, kept only where the model writes it itself: greedy
    episodes (answers, turns, token ids) equal decoding token by token, in fewer forward passes."""
    model, processor = shipped_model
    requests = [Request(i.image, i.question, i.needs_high_res) for i in synth_items[:16]]
    runs = {}
    for memory in (False, True):
        engine = TransformersEngine(model, processor, batch_size=8, draft_memory=memory)
        engine.run(requests[8:], "visionthink")  # earlier batches teach the memory
        with counted_forwards(model) as calls:
            episodes = engine.run(requests[:8], "visionthink")
        runs[memory] = (episodes, len(calls))
    assert_same_episodes(runs[True][0], runs[False][0])
    assert [e.fed_token_ids for e in runs[True][0]] == [e.fed_token_ids for e in runs[False][0]]
    assert runs[True][1] <= runs[False][1] - 4  # measured: 16 forward passes instead of 20



@pytest.mark.parametrize("preset", ["tiny", "real-vocab-small"])
@pytest.mark.parametrize("profile", ["visionthink", "release"])
def test_a_second_turn_processes_only_its_new_image_and_encodes_the_same(preset, profile):
    """`encode_batch_reusing` gives `encode_batch`'s rows exactly (ids, types, grids, patches), turn after turn,
    while the image processor sees each image once (the second turn only the high view)."""
    from visionthink import tokens
    from visionthink.data import synth
    from visionthink.images import make_views
    from visionthink.models.presets import build_preset
    from visionthink.profiles import get_profile
    from visionthink.tokens import ProcessedImages, encode_batch, encode_batch_reusing

    _, processor = build_preset(preset)
    rules = get_profile(profile)
    first, second, lows, highs = [], [], [], []
    for index, item in enumerate(synth.split_items("test", 5, seed=3)):
        views = make_views(item.image, processor.grid)
        messages = rules.first_turn(item.question + " please" * index, views.low)
        first.append(messages)
        call = rules.call_text("look", "resize_image", {"action": "resize"})
        reply = rules.tool_turn(rules.tool("resize_image"), views.high)
        second.append([*messages, protocol.assistant_turn(call), reply])
        lows.append(views.low.size)
        highs.append(views.high.size)
    seen: list[tuple[int, int]] = []
    process = type(processor.image_processor).__call__
    cut = tokens.patches

    def counting(self, images, *args, **kwargs):
        seen.extend(image.size for image in images)
        return process(self, images, *args, **kwargs)

    def counting_patches(image_processor, images):  # the processor's values without calling it (pixels.py)
        made = cut(image_processor, images)
        if made is not None:
            seen.extend(image.size for image in images)
        return made

    known = ProcessedImages()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(processor.image_processor), "__call__", counting)
        patch.setattr(tokens, "patches", counting_patches)
        reused = [encode_batch_reusing(processor, turn, known, True, protocol=rules) for turn in (first, second)]
    assert seen == lows + highs
    for turn, rows in zip((first, second), reused, strict=True):
        for plain, row in zip(encode_batch(processor, turn, True, protocol=rules), rows, strict=True):
            for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw", "pixel_values"):
                assert torch.equal(plain[key], row[key]) and plain[key].dtype == row[key].dtype, key


def test_the_vision_tower_reads_each_turns_patches_where_the_processor_wrote_them(random_tiny, synth_items):
    """Each prefill hands the model the patches of its new images as one view of what `pixels.patches` wrote for
    them: no copy per row or per batch (a few hundred MB a batch at document sizes)."""
    from visionthink import tokens

    model, processor = random_tiny
    engine = TransformersEngine(model, processor, SamplingConfig(max_new_tokens=3), batch_size=4)
    written, read = [], []
    cut, forward = tokens.patches, model.forward

    def recording_patches(image_processor, images):
        made = cut(image_processor, images)
        written.append(made[0])
        return made

    def recording_forward(*args, **kwargs):
        if kwargs.get("pixel_values") is not None:
            read.append(kwargs["pixel_values"])
        return forward(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "patches", recording_patches)
        patch.setattr(model, "forward", recording_forward)
        episodes = engine.run(requests_for(synth_items[:4]), "oracle")
    assert any(e.resized for e in episodes) and len(read) == len(written) == 2  # the low views, then the high ones
    for made, fed in zip(written, read, strict=True):
        assert fed.data_ptr() == made.data_ptr() and fed.shape == made.shape and torch.equal(fed, made)


@pytest.mark.parametrize("do_sample", [False, True])
def test_banned_tokens_are_never_written_and_bans_are_per_row(shipped_model, synth_items, do_sample):
    """A token favoured everywhere is written at once by the row that may write it and never by the rows that may
    not (`kv_decoder.Banned` sets only the banned ids to -inf, row by row)."""
    from grpo_scripted import favoured

    from visionthink.engines.kv_decoder import KVDecoder

    model, processor = shipped_model
    engine = TransformersEngine(model, processor)
    favourite = processor.tokenizer.convert_tokens_to_ids("<answer>")
    conversations = [protocol.first_turn(item.question, item.image) for item in synth_items[:3]]
    bans = [[*engine.never_ids, favourite], list(engine.never_ids), [favourite]]
    with favoured(model, favourite, 50.0):
        decoder = KVDecoder(model, engine.pad_id, engine.stop_ids)
        engine.feed(decoder, conversations)
        sampling = SamplingConfig(max_new_tokens=6, do_sample=do_sample, seed=0)
        written = decoder.decode(sampling, banned_ids=bans, generator=torch.Generator().manual_seed(0),
                                 draft=engine.draft)
    assert written[1][0] == favourite
    assert favourite not in written[0] and favourite not in written[2]
    assert not set(written[0]) & set(engine.never_ids)


def test_greedy_choice_is_torchs_argmax_on_ties_infinities_and_strided_rows():
    from visionthink.engines.kv_decoder import greedy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 1031, generator=generator)
    logits[0, :, 5] = logits[0, :, 900] = 50.0  # a tie: the first wins
    logits[1, :, :] = float("-inf")
    logits[2, :, 7] = logits[2, :, 8] = float("inf")
    logits[3, :, 100:200] = logits[3, :, 100:200].round()  # many equal values
    for view in (logits[:, -1], logits[:, 0], logits.reshape(18, 1031), logits[1:4, 1]):
        expected = view.argmax(-1)
        assert torch.equal(greedy(view), expected) and greedy(view).dtype == expected.dtype
    half = logits[:, -1].to(torch.bfloat16)
    assert torch.equal(greedy(half), half.argmax(-1))
