"""VisionThink episodes on a local transformers VLM, in batches, the KV cache kept across turns.

The loop and the modes are `engines.base`'s; this backend prefills each conversation (only what the
cache lacks is computed) and decodes the next assistant turn.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from visionthink import protocol
from visionthink.engines.base import Generated, Request, never_write_ids, run_episodes, stop_ids
from visionthink.engines.confidence import ANSWER_OPEN, answer_confidence, token_texts
from visionthink.engines.kv_decoder import (
    Draft,
    KVDecoder,
    OutputMemory,
    SamplingConfig,
    SharedPrefix,
    common_prefix,
    input_device,
)
from visionthink.engines.tool_decision import Decisions, PathTokens
from visionthink.models import load_model
from visionthink.models.additive_mask import use_additive_mask
from visionthink.models.patch_embed import use_linear_patch_embed
from visionthink.profiles import ProtocolProfile, declared_profile, get_profile
from visionthink.tokens import ProcessedImages, encode_batch, encode_batch_reusing, visual_tokens

__all__ = ["Request", "TransformersEngine", "never_write_ids"]


class TransformersEngine:
    """Episodes on a local transformers VLM (the tiny model on CPU, Qwen2.5-VL on GPU)."""

    decides_by_threshold = True
    """It records P(tool) and honours `Request.tool_threshold` (`engines.tool_decision`)."""
    records_confidence = True
    """It records the first turn's answer confidence and honours `Request.escalate_below` (`engines.confidence`)."""

    def __init__(self, model, processor, sampling: SamplingConfig | None = None, batch_size: int = 16,
                 reuse_cache: bool = True, draft_tool_call: bool = True, share_prefix: bool = True,
                 draft_repeats: bool = True, draft_memory: bool = True,
                 protocol: str | ProtocolProfile | None = None):
        self.model = model
        use_linear_patch_embed(model)  # same outputs up to rounding, a fraction of the time (models/patch_embed.py)
        use_additive_mask(model)  # the same outputs, the mask made additive once per pass (models/additive_mask.py)
        self.protocol = get_profile(protocol)
        """The conversation format (`profiles`; default `visionthink`)."""
        self.reuse_cache = reuse_cache
        """Feed the resize turn on top of the first turn's KV cache (False: recompute the whole prefix)."""
        self.prefill_tokens = 0
        """Prompt tokens computed by prefill so far (cached tokens are not counted)."""
        self.processor = processor
        self.grid = processor.grid
        self.sampling = sampling or SamplingConfig(max_new_tokens=self.protocol.max_new_tokens)
        """Default: greedy, the profile's turn budget (`ProtocolProfile.max_new_tokens`)."""
        self.batch_size = batch_size
        tokenizer = processor.tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.never_ids = never_write_ids(tokenizer)
        """Tokens a model may never write: image placeholders would break the next turn's rendering."""
        self.stop_ids = stop_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.draft: Draft | None = None
        """After `<tool_call>`, the rest of the profile's call is fed in one forward pass and kept where the model
        would have written it itself (outputs unchanged; see `KVDecoder.decode`)."""
        if self.protocol.call_json is not None and draft_tool_call:
            tail = tokenizer.encode(f"\n{self.protocol.call_json}\n", add_special_tokens=False)
            self.draft = Draft(self.tool_call_id, (*tail, tokenizer.convert_tokens_to_ids("</tool_call>"),
                                                   self.stop_ids[0]))
        self.generator = torch.Generator().manual_seed(self.sampling.seed) if self.sampling.seed is not None else None
        self.share_prefix = share_prefix
        """Compute the system prompt and tool block once and start every row's cache from it."""
        self.draft_repeats = draft_repeats
        """In a second turn, guess the first turn's tokens while the model repeats them (outputs unchanged)."""
        self._prefix: SharedPrefix | None = None
        self.memory = OutputMemory() if draft_memory else None
        """What earlier turns wrote, guessed again where a turn starts to repeat it (outputs unchanged)."""
        self._path_tokens: PathTokens | None = None

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, device: str | None = None,
                        dtype: str | None = None, attn_implementation: str | None = None,
                        device_map: str | dict | None = None, **kwargs) -> TransformersEngine:
        """The engine on a model folder (default: the shipped one) under the profile it declares (unless `protocol` is
        given: `profiles.declared_profile`); other arguments go to `__init__`.

        `attn_implementation` (`sdpa`, `flash_attention_2`, `eager`) and `device_map` (`auto` spreads a model larger
        than one GPU over the visible ones; `device` is then not used) go to `models.load_model`.
        """
        model, processor = load_model(model_dir, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                      device_map=device_map)
        if kwargs.get("protocol") is None:
            kwargs["protocol"] = declared_profile(model_dir)
        return cls(model, processor, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the model reads its inputs: its input embeddings' device (under a device map, the first layers')."""
        return input_device(self.model)

    def run(self, requests: list[Request], mode: str = "visionthink", progress=None,
            sampling: SamplingConfig | None = None) -> list[protocol.Episode]:
        """Episodes for all requests, `batch_size` at a time, in order; `sampling` replaces the engine's for this
        call (`_Call`; the engine is not changed)."""
        return run_episodes(self if sampling is None else _Call(self, sampling), requests, mode, progress)

    def session(self, call: _Call | None = None) -> _KVSession:
        """A batch's session, decoding by `call`'s sampling (None: the engine's)."""
        return _KVSession(self, self if call is None else call)

    def shared_prefix(self) -> SharedPrefix | None:
        """The text every first turn starts with (up to the first image), with its cache; computed once."""
        if not self.share_prefix:
            return None
        if self._prefix is None:
            image = Image.new("RGB", (self.grid.factor, self.grid.factor))
            a, b = encode_batch(self.processor, [self.protocol.first_turn(q, image) for q in ("a?", "b!")], True,
                                protocol=self.protocol)
            ids, types = a["input_ids"][0].tolist(), a["mm_token_type_ids"][0].tolist()
            length = common_prefix(ids, b["input_ids"][0].tolist())
            length = min(length, types.index(1) if 1 in types else length)
            self._prefix = SharedPrefix.compute(self.model, ids[:length])
        return self._prefix

    @property
    def path_tokens(self) -> PathTokens:
        """The tokens that open the answer and the tool call (`engines.tool_decision`), found once."""
        if self._path_tokens is None:
            self._path_tokens = PathTokens.of(self.processor.tokenizer)
        return self._path_tokens

    def banned_ids(self, forbid_call: bool) -> list[int]:
        """Token ids a turn may not produce: vision placeholders, and the tool call where it is forbidden."""
        return [*self.never_ids, self.tool_call_id] if forbid_call else list(self.never_ids)

    def feed(self, decoder: KVDecoder, conversations: list[list[protocol.Message]],
             known: ProcessedImages | None = None) -> None:
        """Prefill each conversation so far (only what the cache lacks is computed; only images `known` has not
        seen are processed)."""
        sequences, types, grids, pixels = [], [], [], []
        known = known or ProcessedImages()
        encoded = encode_batch_reusing(self.processor, conversations, known, True, protocol=self.protocol,
                                       pixels=False)
        for messages, batch in zip(conversations, encoded, strict=True):
            sequences.append(batch["input_ids"][0])
            types.append(batch["mm_token_type_ids"][0])
            grid = batch.get("image_grid_thw")
            grids.append(grid)
            images = protocol.images_in(messages)
            pixels.append([known.get(image)[1] for image in images])  # per image: no copies
            received = visual_tokens(self.processor, grid) if grid is not None else []
            expected = [self.grid.tokens(*image.size) for image in images]
            if received != expected:
                raise RuntimeError(f"the processor gave {received} visual tokens where the grid says {expected}")
        decoder.prefill(sequences, types, grids, pixels)

    def decode_text(self, ids: list[int]) -> str:
        """A turn's text without its end marker."""
        while ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.processor.tokenizer.decode(ids, skip_special_tokens=False)

    def confidence_of(self, ids: list[int], probs: list[float], text: str) -> float | None:
        """The answer confidence of a turn that wrote `ids` (`text`) with `probs` (`engines.confidence`)."""
        if ANSWER_OPEN not in text:
            return None
        return answer_confidence(token_texts(self.processor.tokenizer, ids), probs)


class _Call:
    """One `run` call with its own sampling, as `run_episodes` sees the engine. A seeded call draws from a generator
    seeded for it and reads no output memory, so what other requests wrote cannot touch its replies, not even
    through the rounding of a checked guess; an unseeded one shares the engine's generator and memory."""

    def __init__(self, engine: TransformersEngine, sampling: SamplingConfig):
        self.engine = engine
        self.sampling = sampling
        seeded = sampling.seed is not None
        self.generator = torch.Generator().manual_seed(sampling.seed) if seeded else engine.generator
        self.memory = None if seeded else engine.memory

    def __getattr__(self, name: str):
        return getattr(self.engine, name)  # the rest (protocol, grid, batch_size, ...) is the engine's

    def session(self) -> _KVSession:
        return self.engine.session(self)


class _KVSession:
    """One batch: a `KVDecoder` whose cache carries the first turn into the second."""

    def __init__(self, engine: TransformersEngine, call: TransformersEngine | _Call):
        self.engine = engine
        self.call = call
        """Whose `sampling`, `generator` and output `memory` the turns decode by, read at each turn."""
        self.decoder: KVDecoder | None = None
        self.rows: list[int] = []
        self.written: dict[int, list[int]] = {}
        """Per batch row, what it wrote in its last turn (guessed again while the next turn repeats it)."""
        self.images = ProcessedImages()
        """The batch's images as patches: a second turn processes only its new image."""

    def generate(self, rows: list[int], conversations: list[list[protocol.Message]],
                 forbid_call: list[bool], tool_thresholds: list[float | None] | None = None,
                 answer_confidence: bool = False) -> list[Generated]:
        engine = self.engine
        if self.decoder is None or not engine.reuse_cache:
            self.decoder = KVDecoder(engine.model, engine.pad_id, engine.stop_ids, prefix=engine.shared_prefix())
        else:
            self.decoder.select([self.rows.index(row) for row in rows])
        self.rows = list(rows)
        decoder = self.decoder
        engine.feed(decoder, conversations, self.images)
        previous = [self.written.get(row, []) for row in rows] if engine.draft_repeats else None
        decisions = None
        if tool_thresholds is not None and not all(forbid_call):
            decisions = Decisions(engine.path_tokens, tool_thresholds, [not f for f in forbid_call],
                                  engine.processor.tokenizer.decode)
        call = self.call
        probs = [[] for _ in rows] if answer_confidence else None
        outputs = decoder.decode(call.sampling, banned_ids=[engine.banned_ids(f) for f in forbid_call],
                                 generator=call.generator, draft=engine.draft, previous=previous,
                                 memory=call.memory, decisions=decisions, token_probs=probs)
        self.written = dict(zip(rows, outputs, strict=True))
        engine.prefill_tokens += decoder.fed_tokens
        decoder.fed_tokens = 0
        # The fed tokens are the rendering minus its final "\n" (tests/test_engine.py proves it; the release template
        # writes no "\n" after an assistant's <|im_end|>), so the
        # rendering's length is known without encoding the conversation and its images once more.
        turns = []
        for index, (ids, history) in enumerate(zip(outputs, decoder.history, strict=True)):
            text = engine.decode_text(ids)
            turns.append(Generated(
                text, len(ids), fed_token_ids=list(history),
                sequence_tokens=len(history) + int(engine.protocol.turn_end_newline),
                p_tool=decisions.p_tool[index] if decisions is not None else None,
                answer_confidence=engine.confidence_of(ids, probs[index], text) if probs is not None else None))
        return turns
