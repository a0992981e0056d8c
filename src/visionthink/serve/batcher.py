"""Dynamic batching for the server: concurrent requests share one forward pass.

`Batcher` is a small asyncio component. Request handlers `submit(key, payload)` and await
the result. One collector task takes the first waiting job, gathers more for at most
`wait_ms` (or until `max_batch` jobs), groups them by key (jobs with different keys cannot
share a batch: another mode or other sampling settings) and runs each group through
`handler(key, payloads)` in one worker thread. While the worker computes, new requests
queue up, so under load every batch after the first is full at once: throughput grows
with concurrency while a lone request waits at most `wait_ms`.

`ModelWorker` is the handler for a `TransformersEngine`: VisionThink groups go through
`engine.run`, and raw groups (the server acting as a plain VLM, see `serve.app`) through
one batched prefill and decode with the engine's model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from visionthink import protocol
from visionthink.engines.kv_decoder import KVDecoder, SamplingConfig
from visionthink.engines.transformers_engine import Request, TransformersEngine
from visionthink.tokens import visual_tokens

Handler = Callable[[Hashable, list[Any]], list[Any]]


class QueueFull(Exception):
    """The server holds `max_queue` waiting jobs already."""


@dataclass
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher has done so far (reported by `/health`)."""

    jobs: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    skipped: int = 0
    """Jobs dropped before running because their caller had given up (timeout, disconnect)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
            "mean_batch_size": round(self.jobs / self.batches, 2) if self.batches else 0.0,
            "failed_batches": self.failed_batches,
            "skipped": self.skipped,
        }


class Batcher:
    """Collects concurrent jobs into batches and runs them in a single worker thread."""

    def __init__(self, handler: Handler, max_batch: int = 16, wait_ms: float = 5.0, max_queue: int = 1024):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.handler = handler
        self.max_batch = max_batch
        self.wait = max(0.0, wait_ms) / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start collecting (call from the running event loop)."""
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionthink-worker")
        self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        """Stop collecting; jobs still waiting are cancelled."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue one job and wait for its result (or its exception).

        Cancelling the caller (e.g. `asyncio.wait_for` running out) cancels the job: if it has
        not started yet it is never run.
        """
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are already waiting")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(key, payload, future))
        return await future

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self._drain_into(batch)
            if len(batch) < self.max_batch and self.wait > 0:
                await asyncio.sleep(self.wait)  # a short wait lets concurrent requests join
                self._drain_into(batch)
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                await self._run_group(loop, key, jobs)

    def _drain_into(self, batch: list[_Job]) -> None:
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _run_group(self, loop: asyncio.AbstractEventLoop, key: Hashable, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.done()]
        self.stats.skipped += len(jobs) - len(live)
        if not live:
            return
        self.stats.jobs += len(live)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        try:
            results = await loop.run_in_executor(self._executor, self.handler, key, [j.payload for j in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(live)} jobs")
        except Exception as error:  # noqa: BLE001 - one bad job must not fail its neighbours
            self.stats.failed_batches += 1
            if len(live) == 1:
                results = [error]
            else:  # find the culprit: run each job alone
                results = []
                for job in live:
                    try:
                        results.extend(await loop.run_in_executor(self._executor, self.handler, key, [job.payload]))
                    except Exception as single:  # noqa: BLE001
                        results.append(single)
        for job, result in zip(live, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


# ---------------------------------------------------------------- the model side


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


@dataclass
class RawResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int
    finished: bool
    """True when the model closed its turn (a stop token), False when it ran out of tokens."""
    seconds: float = 0.0


@dataclass(frozen=True)
class BatchKey:
    """Jobs that may share a batch: same kind ('visionthink' mode name or 'raw') and same sampling."""

    kind: str
    sampling: tuple = field(default=())

    def sampling_config(self, default: SamplingConfig) -> SamplingConfig:
        if not self.sampling:
            return default
        return SamplingConfig(**dict(self.sampling))


class ModelWorker:
    """Runs batches on a `TransformersEngine` (always from the batcher's single worker thread)."""

    def __init__(self, engine: TransformersEngine):
        self.engine = engine
        self.default_sampling = engine.sampling

    def __call__(self, key: BatchKey, payloads: list[Any]) -> list[Any]:
        sampling = key.sampling_config(self.default_sampling)
        if key.kind == "raw":
            return self.generate_raw(payloads, sampling)
        self.engine.sampling = sampling
        try:
            return self.engine.run([p.request for p in payloads], key.kind)
        finally:
            self.engine.sampling = self.default_sampling

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
            pixels.append(batch.get("pixel_values"))
            visual.append(sum(visual_tokens(processor, grid)) if grid is not None else 0)
        decoder = KVDecoder(engine.model, engine.pad_id, engine.stop_ids)
        decoder.prefill(sequences, types, grids, pixels)
        engine.prefill_tokens += decoder.fed_tokens
        banned = [[*engine.never_ids, engine.tool_call_id] if job.ban_tool_calls else list(engine.never_ids)
                  for job in jobs]
        outputs = decoder.decode(sampling, banned_ids=banned, generator=engine.generator)
        seconds = (time.perf_counter() - began) / len(jobs)
        results = []
        for ids, sequence, tokens in zip(outputs, sequences, visual, strict=True):
            finished = bool(ids) and ids[-1] in engine.stop_ids
            text = processor.tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=False)
            results.append(RawResult(text, len(sequence), len(ids), tokens, finished, seconds))
        return results
