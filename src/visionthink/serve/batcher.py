"""Dynamic batching for the server: concurrent requests share one forward pass.

`Batcher` is a small asyncio component. Request handlers `submit(key, payload)` and await
the result. One collector task takes the first waiting job, gathers more for at most
`wait_ms` (or until `max_batch` jobs), groups them by key (jobs with different keys cannot
share a batch: another mode or other sampling settings) and runs each group through
`handler(key, payloads, abandon)` in one worker thread. While the worker computes, new requests
queue up, so under load every batch after the first is full at once: throughput grows
with concurrency while a lone request waits at most `wait_ms`.

A job whose caller has given up (its timeout ran out, its client left) is skipped if it has
not started; a running batch whose callers have all given up is told so through
`Abandon.requested`, and a handler that stops early raises `Abandoned` (it is not retried).
The handler for the model is `serve.worker.ModelWorker`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The server holds `max_queue` waiting jobs already."""


class Abandoned(Exception):
    """A handler stopped a batch because every caller of it had given up."""


class Abandon:
    """Set (from the event loop) once every job of a running batch has been given up by its caller."""

    def __init__(self, jobs: int):
        self._left = jobs
        self._event = threading.Event()

    def one_gone(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self._left -= 1
            if self._left <= 0:
                self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


Handler = Callable[[Hashable, list[Any], Abandon], list[Any]]


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
    abandoned: int = 0
    """Batches stopped while running because every caller had given up."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
            "mean_batch_size": round(self.jobs / self.batches, 2) if self.batches else 0.0,
            "failed_batches": self.failed_batches,
            "skipped": self.skipped,
            "abandoned": self.abandoned,
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

    async def _run(self, loop: asyncio.AbstractEventLoop, key: Hashable, jobs: list[_Job]) -> list[Any]:
        abandon = Abandon(len(jobs))
        for job in jobs:
            job.future.add_done_callback(abandon.one_gone)
        try:
            results = await loop.run_in_executor(self._executor, self.handler, key, [j.payload for j in jobs], abandon)
        finally:
            for job in jobs:
                job.future.remove_done_callback(abandon.one_gone)
        if len(results) != len(jobs):
            raise RuntimeError(f"batch handler returned {len(results)} results for {len(jobs)} jobs")
        return results

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
            results = await self._run(loop, key, live)
        except Abandoned:
            self.stats.abandoned += 1
            return
        except Exception as error:  # noqa: BLE001 - one bad job must not fail its neighbours
            self.stats.failed_batches += 1
            if len(live) == 1:
                results = [error]
            else:  # find the culprit: run each job alone
                results = []
                for job in live:
                    if job.future.done():
                        results.append(asyncio.CancelledError())
                        continue
                    try:
                        results.extend(await self._run(loop, key, [job]))
                    except Abandoned:
                        results.append(asyncio.CancelledError())
                    except Exception as single:  # noqa: BLE001
                        results.append(single)
        for job, result in zip(live, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
