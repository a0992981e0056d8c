"""The batcher's handler for a `TransformersEngine`: VisionThink episodes and raw assistant turns.

VisionThink groups go through the engine's public `run`; raw groups (the server acting as a
plain VLM) through one batched prefill and decode with the engine's model. Both stop at the
next forward pass once every caller of the batch has given up (a forward pre-hook on the
model raises `Abandoned` from the worker thread only). A request with a `seed` runs in a
batch of its own with a generator seeded for it, so the same seed gives the same reply
whatever else is being served.

A group runs on the served engine whose profile offers its mode's tools, restricted to exactly those tools (a mode
that never calls: the served model's own profile; `profiles.mode_profile`; an engine on the same weights under that
profile is built on first use).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from visionthink import protocol
from visionthink.engines.confidence import token_texts
from visionthink.engines.factory import is_local, with_profile
from visionthink.engines.kv_decoder import KVDecoder, SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.modes import MODES
from visionthink.pixels import per_image
from visionthink.profiles import ProtocolProfile, missing_tools_error, mode_profile
from visionthink.serve.batcher import Abandon, Abandoned
from visionthink.serve.checks import BatchKey
from visionthink.tokens import visual_tokens


@dataclass(frozen=True)
class VisionThinkJob:
    """One VisionThink episode: an already decoded image and a question."""

    request: Request


@dataclass(frozen=True)
class RawJob:
    """One plain assistant turn over arbitrary messages (images already decoded to PIL)."""

    messages: list[protocol.Message]
    tools: list[dict] | None
    ban_tool_calls: bool = False
    banned_ids: tuple[int, ...] = ()
    """More token ids the turn may not write (the request's `logit_bias` bans)."""
    logprobs: bool = False
    """Return each written token's log-probability (`RawResult.token_logprobs`)."""


@dataclass
class RawResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int
    finished: bool
    """True when the model closed its turn (a stop token), False when it ran out of tokens."""
    seconds: float = 0.0
    token_logprobs: list[tuple[str, float]] = field(default_factory=list)
    """Each written token's text and log-probability, the closing stop token left out (jobs with `logprobs`)."""


class ModelWorker:
    """Runs batches on a `TransformersEngine` (always from the batcher's single worker thread)."""

    def __init__(self, engine: TransformersEngine, zoom_engine: TransformersEngine | None = None):
        self.engine = engine
        self.default_sampling = engine.sampling
        self.served = [engine] + ([zoom_engine] if zoom_engine is not None else [])
        """The engines given: the served model, and another for the modes whose tools it lacks (a zoom model)."""
        self._by_profile = {served.protocol.name: served for served in self.served}

    def _offering(self, kind: str) -> TransformersEngine | None:
        """The first given engine whose profile offers the tools of mode `kind`."""
        return next((served for served in self.served if not served.protocol.lacks(MODES[kind].tools)), None)

    def _base(self, kind: str) -> TransformersEngine | None:
        """The served model for a mode that never calls, else the first engine that offers the mode's tools."""
        return self.engine if MODES[kind].calls == "never" else self._offering(kind)

    def profile_for(self, kind: str) -> ProtocolProfile | None:
        """The profile mode `kind` runs on (`profiles.mode_profile` of the base engine's; None: no given engine
        offers the mode's tools)."""
        base = self._base(kind)
        return None if base is None else mode_profile(base.protocol, MODES[kind])

    def engine_for(self, kind: str) -> TransformersEngine:
        """The engine a VisionThink batch of mode `kind` runs on, under `profile_for(kind)` (built once, on the
        base engine's weights); a ValueError when no given engine offers the mode's tools."""
        base, wanted = self._base(kind), self.profile_for(kind)
        if base is None:
            raise ValueError(missing_tools_error(kind, MODES[kind].tools, self.engine.protocol))
        if wanted.name not in self._by_profile:
            self._by_profile[wanted.name] = with_profile(base, wanted)
        return self._by_profile[wanted.name]

    def __call__(self, key: BatchKey, payloads: list[Any], abandon: Abandon | None = None) -> list[Any]:
        sampling = key.sampling_config(self.default_sampling)
        thread = threading.current_thread()

        def stop_if_abandoned(_module, _inputs) -> None:
            if abandon is not None and abandon.requested and threading.current_thread() is thread:
                raise Abandoned

        hook = self.engine.model.register_forward_pre_hook(stop_if_abandoned) if is_local(self.engine) else None
        try:
            if sampling.seed is None:
                return self._run(key.kind, payloads, sampling)
            return [self._run(key.kind, [payload], sampling)[0] for payload in payloads]
        finally:
            if hook is not None:
                hook.remove()

    def _run(self, kind: str, payloads: list[Any], sampling: SamplingConfig) -> list[Any]:
        if kind == "raw":
            return self.generate_raw(payloads, sampling)
        return self.engine_for(kind).run([p.request for p in payloads], kind, sampling=sampling)

    def generate_raw(self, jobs: list[RawJob], sampling: SamplingConfig) -> list[RawResult]:
        """One assistant turn per job, all rows in one batched prefill and decode."""
        began = time.perf_counter()
        engine = self.engine
        processor = engine.processor
        sequences, types, grids, pixels, visual = [], [], [], [], []
        for job in jobs:
            text = processor.apply_chat_template(job.messages, tools=job.tools or None, tokenize=False,
                                                 add_generation_prompt=True)
            images = protocol.images_in(job.messages)
            batch = processor(text=[text], images=images or None, return_tensors="pt")
            sequences.append(batch["input_ids"][0])
            types.append(batch["mm_token_type_ids"][0])
            grid = batch.get("image_grid_thw")
            grids.append(grid)
            # one view per image, as `KVDecoder.prefill` takes them (it joins them back without copying)
            pixels.append(per_image(batch["pixel_values"], grid) if grid is not None else [])
            visual.append(sum(visual_tokens(processor, grid)) if grid is not None else 0)
        decoder = KVDecoder(engine.model, engine.pad_id, engine.stop_ids)
        decoder.prefill(sequences, types, grids, pixels)
        engine.prefill_tokens += decoder.fed_tokens
        vocabulary = engine.model.get_output_embeddings().weight.shape[0]
        banned = [[*engine.never_ids, *([engine.tool_call_id] if job.ban_tool_calls else []),
                   *(i for i in job.banned_ids if i < vocabulary)] for job in jobs]
        seeded = sampling.seed is not None
        generator = torch.Generator().manual_seed(sampling.seed) if seeded else engine.generator
        probs = [[] for _ in jobs] if any(job.logprobs for job in jobs) else None
        outputs = decoder.decode(sampling, banned_ids=banned, generator=generator, token_probs=probs)
        seconds = (time.perf_counter() - began) / len(jobs)
        results = []
        for row, (job, ids, sequence, tokens) in enumerate(zip(jobs, outputs, sequences, visual, strict=True)):
            finished = bool(ids) and ids[-1] in engine.stop_ids
            written = ids[:-1] if finished else ids
            text = processor.tokenizer.decode(written, skip_special_tokens=False)
            logprobs = []
            if job.logprobs:
                pieces = token_texts(processor.tokenizer, written)
                logprobs = [(piece, math.log(max(p, 1e-45))) for piece, p in zip(pieces, probs[row], strict=False)]
            results.append(RawResult(text, len(sequence), len(ids), tokens, finished, seconds, logprobs))
        return results
