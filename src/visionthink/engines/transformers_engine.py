"""Run VisionThink episodes with a transformers model, in batches, reusing the KV cache across turns.

Modes:
- `full`: one turn, full-resolution image, tool call banned.
- `low`: one turn, low-resolution image, tool call banned.
- `visionthink`: low-res first; the model decides whether to call `resize_image`.
- `oracle`: low-res first; resizes exactly when the item needs high resolution (its label says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from visionthink import protocol
from visionthink.engines.kv_decoder import KVDecoder, SamplingConfig
from visionthink.images import ImageSource, load_image, make_views
from visionthink.models import load_model
from visionthink.tokens import encode, visual_tokens

MODES = ("full", "low", "visionthink", "oracle")


@dataclass
class Request:
    """One question about one image. `needs_high_res` is only read by the `oracle` mode."""

    image: ImageSource
    question: str
    needs_high_res: bool | None = None


@dataclass
class _Row:
    request: Request
    views: object
    messages: list
    turns: list
    visual: list[int]
    full_tokens: int
    seconds: dict
    done: bool = False
    generated_tokens: int = 0
    fed: list[int] | None = None


SPECIAL_MARKERS = ("<|", "|>", "<tool_call>", "</tool_call>")


def never_write_ids(tokenizer) -> list[int]:
    """Token ids a model must not write: vision placeholders and `<|im_start|>`, plus ordinary tokens
    whose text spells a special token (a BPE may learn such merges); re-encoding either would break
    the next turn's rendering."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in (
        "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")}
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for token, index in tokenizer.get_vocab().items():
        if index not in special and any(marker in token for marker in SPECIAL_MARKERS):
            ids.add(index)
    return sorted(ids)


class TransformersEngine:
    """Episodes on a local transformers VLM (the tiny model on CPU, Qwen2.5-VL on GPU)."""

    def __init__(self, model, processor, sampling: SamplingConfig | None = None, batch_size: int = 16,
                 reuse_cache: bool = True):
        self.model = model
        self.reuse_cache = reuse_cache
        """Feed the resize turn on top of the first turn's KV cache (False: recompute the whole prefix)."""
        self.prefill_tokens = 0
        """Prompt tokens computed by prefill so far (cached tokens are not counted)."""
        self.processor = processor
        self.sampling = sampling or SamplingConfig()
        self.batch_size = batch_size
        tokenizer = processor.tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.never_ids = never_write_ids(tokenizer)
        """Tokens a model may never write: image placeholders would break the next turn's rendering."""
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        self.pad_id = tokenizer.pad_token_id
        self.generator = torch.Generator().manual_seed(self.sampling.seed) if self.sampling.seed is not None else None

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, **kwargs) -> TransformersEngine:
        model, processor = load_model(model_dir)
        return cls(model, processor, **kwargs)

    def run(self, requests: list[Request], mode: str = "visionthink", progress=None) -> list[protocol.Episode]:
        """Episodes for all requests, `batch_size` at a time, in order."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        episodes: list[protocol.Episode] = []
        for start in range(0, len(requests), self.batch_size):
            episodes.extend(self._run_batch(requests[start : start + self.batch_size], mode))
            if progress is not None:
                progress.update(len(requests[start : start + self.batch_size]))
        return episodes

    def _run_batch(self, requests: list[Request], mode: str) -> list[protocol.Episode]:
        began = time.perf_counter()
        rows = []
        for request in requests:
            views = make_views(load_image(request.image), self.processor.grid)
            first_image = views.high if mode == "full" else views.low
            full_tokens = self.processor.grid.tokens(*views.high.size)
            rows.append(_Row(request, views, protocol.first_turn(request.question, first_image), [], [],
                             full_tokens, {}))
        prepared = time.perf_counter()
        for row in rows:
            row.seconds["prepare"] = (prepared - began) / len(rows)
        decoder = KVDecoder(self.model, self.pad_id, self.stop_ids)
        active = list(range(len(rows)))
        for turn_index in range(protocol.MAX_ASSISTANT_TURNS):
            turn_began = time.perf_counter()
            self._feed(decoder, [rows[i] for i in active])
            banned = [self._banned(mode, rows[i].request, turn_index) for i in active]
            outputs = decoder.decode(self.sampling, banned_ids=banned, generator=self.generator)
            elapsed = (time.perf_counter() - turn_began) / max(1, len(active))
            still = []
            for slot, index in enumerate(active):
                row = rows[index]
                row.seconds[f"turn{turn_index + 1}"] = elapsed
                row.generated_tokens += len(outputs[slot])
                text = self._decode_text(outputs[slot])
                turn = protocol.parse_turn(text)
                if mode == "oracle" and turn_index == 0:
                    text, turn = self._oracle_turn(row.request, text, turn)
                row.messages.append(protocol.assistant_turn(text))
                row.turns.append(turn)
                last_turn = turn_index + 1 == protocol.MAX_ASSISTANT_TURNS or mode in ("full", "low")
                if last_turn or turn.kind == "answer":
                    row.done = True
                elif turn.kind == "resize":
                    row.messages.append(protocol.tool_turn(row.views.high))
                    still.append((slot, index))
                elif "<tool_call>" in text:
                    row.messages.append(protocol.error_turn(turn.error or "malformed tool call"))
                    still.append((slot, index))
                else:
                    row.done = True
            for slot, index in enumerate(active):
                rows[index].fed = list(decoder.history[slot])
            if not still:
                self.prefill_tokens += decoder.fed_tokens
                break
            self.prefill_tokens += decoder.fed_tokens
            decoder.fed_tokens = 0
            decoder.select([slot for slot, _ in still])
            if not self.reuse_cache:
                decoder = KVDecoder(self.model, self.pad_id, self.stop_ids)
            active = [index for _, index in still]
        return [self._episode(row, mode) for row in rows]

    def _feed(self, decoder: KVDecoder, rows: list[_Row]) -> None:
        """Prefill each row's conversation so far (only what the cache lacks is computed)."""
        sequences, types, grids, pixels = [], [], [], []
        for row in rows:
            batch = encode(self.processor, row.messages, add_generation_prompt=True)
            sequences.append(batch["input_ids"][0])
            types.append(batch["mm_token_type_ids"][0])
            grid = batch.get("image_grid_thw")
            grids.append(grid)
            pixels.append(batch.get("pixel_values"))
            row.visual = visual_tokens(self.processor, grid) if grid is not None else []
        decoder.prefill(sequences, types, grids, pixels)

    def _banned(self, mode: str, request: Request, turn_index: int) -> list[int]:
        """Token ids a row may not produce: vision placeholders, and the tool call where the mode forbids it."""
        if mode in ("full", "low"):
            return [*self.never_ids, self.tool_call_id]
        if mode == "oracle" and turn_index == 0:
            if request.needs_high_res is None:
                raise ValueError("oracle mode needs `needs_high_res` on every request")
            return self.never_ids if request.needs_high_res else [*self.never_ids, self.tool_call_id]
        return self.never_ids

    def _decode_text(self, ids: list[int]) -> str:
        while ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.processor.tokenizer.decode(ids, skip_special_tokens=False)

    @staticmethod
    def _oracle_turn(request: Request, text: str, turn: protocol.Turn) -> tuple[str, protocol.Turn]:
        """Force a resize where the item needs it, keeping the model's own reasoning.

        (Where it does not, `_banned` already kept the tool call out of the first turn.)
        """
        if request.needs_high_res and turn.kind != "resize":
            text = protocol.resize_text(turn.think or "")
            return text, protocol.parse_turn(text)
        return text, turn

    def _episode(self, row: _Row, mode: str) -> protocol.Episode:
        resized = any(t.kind == "resize" for t in row.turns)
        final = row.turns[-1] if row.turns else None
        answer = final.answer if final is not None and final.kind == "answer" else None
        # The fed tokens are the rendering minus its final "\n" (tests/test_engine.py proves it), so the
        # rendering's length is known without encoding the conversation and its images once more.
        sequence = len(row.fed or []) + 1
        return protocol.Episode(
            messages=row.messages,
            answer=answer,
            resized=resized,
            turns=row.turns,
            visual_tokens_per_turn=row.visual,
            full_res_visual_tokens=row.full_tokens,
            prompt_tokens=sequence - row.generated_tokens,
            generated_tokens=row.generated_tokens,
            seconds=row.seconds,
            mode=mode,
            fed_token_ids=row.fed or [],
        )
