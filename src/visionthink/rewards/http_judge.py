"""An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint, retried with tenacity."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import threading
import warnings
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict
from visionthink.rewards.judge_cache import JudgeCache, plan_batch
from visionthink.rewards.judge_prompt import JUDGE_PROMPT, JUDGE_SYSTEM, parse_score, render_prompt
from visionthink.rewards.rule_judge import Fallback, RuleJudge, check_fallback, fallback_verdict

MAX_REPLY_BYTES = 1 << 20
"""Largest judge reply body read (1 MiB): a verdict of a few hundred tokens is a few KB."""
BATCH_TIMEOUT = 600.0
"""Seconds one `HTTPJudge.grade()` call may take in all before unanswered requests fall back."""


class JudgeUnavailable(RuntimeError):
    """The judge refused or could not be reached when checked before a run (`HTTPJudge.check`)."""


class FailedCall(Exception):
    """One attempt that did not produce a score; `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool, raw: str | None = None):
        super().__init__(message)
        self.retry = retry
        self.raw = raw


def _retryable(error: BaseException) -> bool:
    """Connection errors, timeouts, 429/5xx and unparsed replies (when so configured); never a cancellation."""
    return isinstance(error, Exception) and (not isinstance(error, FailedCall) or error.retry)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _httpx():
    """`httpx`, or its drop-in successor `httpx2` (what this project's environment ships)."""
    try:
        import httpx
    except ImportError:
        try:
            import httpx2 as httpx
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError("HTTPJudge needs `pip install httpx`") from error
    return httpx


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class HTTPJudge(Judge):
    """An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, OpenAI, ...).

    - `concurrency` requests at most in flight (a semaphore), each attempt bounded by `timeout` seconds.
    - Connection errors, timeouts, HTTP 429/5xx and replies without a score are retried `retries`
      times (tenacity), waiting ``backoff * 2**(n-1)`` seconds before the n-th retry (capped at
      `backoff_max`, plus up to `jitter` of it at random); other HTTP errors (401, 404, ...) are not retried.
    - `api_key` (sent as a Bearer token) defaults to the ``VISIONTHINK_JUDGE_API_KEY`` variable; a
      local server needs none.
    - Successful verdicts are cached (`JudgeCache`: in memory, and appended to the JSONL `cache_path`
      when given); duplicates within a batch are sent once. A request without a prediction is
      graded 0 without a call.
    - After the last failed attempt, `fallback` decides the verdict (``ok=False``, ``error`` set).
    - A reply body over `max_reply_bytes` (1 MiB) is refused there and not retried (a judge asked for
      a short verdict does not send megabytes); the score is parsed in linear time.
    - `batch_timeout` (600 s; None for none) bounds a whole `grade()` call: requests still unanswered
      then are cancelled and fall back, so a slow or hostile backend cannot hold a training step
      for ``(retries + 1) x timeout`` per request.

    `stats` counts: ``requests`` (verdicts asked for), ``cache_hits``, ``http_calls`` (attempts sent),
    ``retries`` (attempts after the first), ``failures`` (verdicts that fell back).
    `grade()` runs its own event loop (from a worker thread when the caller's thread already has
    one); `agrade()` is the coroutine.
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str = "gpt-4o",
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        jitter: float = 0.1,
        fallback: Fallback = "rule",
        cache: bool = True,
        cache_path: str | Path | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        prompt_template: str = JUDGE_PROMPT,
        system_prompt: str | None = JUDGE_SYSTEM,
        retry_unparsed: bool = True,
        trust_env: bool = True,
        rule_judge: RuleJudge | None = None,
        extra_body: dict[str, Any] | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        batch_timeout: float | None = BATCH_TIMEOUT,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if max_reply_bytes < 1:
            raise ValueError("max_reply_bytes must be at least 1")
        if batch_timeout is not None and not batch_timeout > 0:
            raise ValueError("batch_timeout must be > 0 seconds (or None for no deadline)")
        self.url = self.completions_url(base_url)
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("VISIONTHINK_JUDGE_API_KEY")
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.fallback = check_fallback(fallback)
        self.use_cache = cache
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.retry_unparsed = retry_unparsed
        self.trust_env = trust_env
        self.rule = rule_judge or RuleJudge()
        self.extra_body = dict(extra_body or {})
        self.max_reply_bytes = int(max_reply_bytes)
        self.batch_timeout = batch_timeout
        self.cache = JudgeCache(cache_path if cache else None, judge=model)
        self.stats = {"requests": 0, "cache_hits": 0, "http_calls": 0, "retries": 0, "failures": 0}
        self._lock = threading.Lock()

    @staticmethod
    def completions_url(base_url: str) -> str:
        """``<base_url>/chat/completions`` unless `base_url` already ends with it."""
        url = base_url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    # ------------------------------------------------------------ start-up check

    def check(self, timeout: float = 30.0) -> None:
        """Ask one short question before a run. A refusal (401/403: the key; 404: the model name or the URL; any
        other 4xx) or no server at the address raises `JudgeUnavailable` with the reason: such a judge would fail
        every verdict, and `fallback` would grade them all without a word. 429, 5xx, timeouts and dropped
        connections are taken as passing trouble (a warning)."""
        httpx = _httpx()
        body = {"model": self.model, "messages": [{"role": "user", "content": "Reply with: Score: 1"}],
                "temperature": 0.0, "max_tokens": 8, **self.extra_body}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with httpx.Client(timeout=timeout, trust_env=self.trust_env) as client:
                response = client.post(self.url, json=body, headers=headers)
                status, text = response.status_code, response.text[:300]
                served = self._served_models(client, headers) if status == 404 else []
        except httpx.ConnectError as error:  # nothing listens there, or the host name does not resolve
            raise JudgeUnavailable(f"judge {self.url} cannot be reached ({type(error).__name__}: {error}); start "
                                   "it, or train with `judge: rule`") from None
        except Exception as error:  # noqa: BLE001 - a timeout or a dropped connection: passing trouble, retried later
            warnings.warn(f"judge {self.url} did not answer the start-up question ({type(error).__name__}); going on",
                          stacklevel=2)
            return
        if status in (401, 403):
            raise JudgeUnavailable(f"judge {self.url} answered HTTP {status} (the key is missing or wrong: set "
                                   f"VISIONTHINK_JUDGE_API_KEY or judge_options.api_key): {text}")
        if status == 404:
            listed = f"; the server serves {', '.join(served)}" if served else ""
            raise JudgeUnavailable(f"judge {self.url} answered HTTP 404 for model {self.model!r}{listed}: name the "
                                   f"served model after '#' in the judge spec (http:<base_url>#<model>) and check "
                                   f"the URL: {text}")
        if 400 <= status < 500 and status != 429:
            raise JudgeUnavailable(f"judge {self.url} refused a request for model {self.model!r} with HTTP "
                                   f"{status}: {text}")

    def _served_models(self, client, headers: dict[str, str]) -> list[str]:
        """The model ids the server's `/models` lists (none when it cannot say)."""
        try:
            listing = client.get(self.url.removesuffix("/chat/completions") + "/models", headers=headers).json()
            return [str(entry["id"]) for entry in listing["data"]][:10]
        except Exception:  # noqa: BLE001 - only a hint for the error message
            return []

    # ------------------------------------------------------------ grading

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """Synchronous grading: its own event loop (in a worker thread if this thread already runs one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agrade(requests))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.agrade(requests)).result()

    async def agrade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order; concurrent calls bounded by `concurrency`."""
        requests = list(requests)
        self._count("requests", len(requests))
        verdicts, pending, hits = plan_batch(requests, self.cache if self.use_cache else None)
        self._count("cache_hits", hits)
        if pending:
            results = await self._grade_pending([requests[indices[0]] for indices in pending.values()])
            for indices, verdict in zip(pending.values(), results, strict=True):
                for index in indices:
                    verdicts[index] = verdict
            if self.use_cache:
                self.cache.add(zip(pending, results, strict=True))
        return [v for v in verdicts if v is not None]

    async def _grade_pending(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """A verdict for each request, all under one `batch_timeout` deadline."""
        httpx = _httpx()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        semaphore = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=self.timeout, trust_env=self.trust_env) as client:
            tasks = [asyncio.ensure_future(self._grade_one(client, semaphore, r)) for r in requests]
            done, late = await asyncio.wait(tasks, timeout=self.batch_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        results = []
        for request, task in zip(requests, tasks, strict=True):
            if task in done and not task.cancelled():
                results.append(task.result())
                continue
            self._count("failures")
            error = f"batch deadline of {self.batch_timeout:g}s passed before the judge replied"
            results.append(fallback_verdict(self.fallback, self.rule, request, error))
        return results

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: doubling from `backoff`, capped, times 1 + up to `jitter`."""
        delay = min(self.backoff_max, self.backoff * 2 ** (state.attempt_number - 1))
        return delay * (1 + self.jitter * random.random())

    async def _grade_one(self, client, semaphore: asyncio.Semaphore, request: JudgeRequest) -> Verdict:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            before_sleep=lambda _: self._count("retries"),
            sleep=_sleep,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, client, semaphore, request)
        except FailedCall as failed:
            error, raw = str(failed), failed.raw
        except TimeoutError:
            error, raw = f"timed out after {self.timeout:g}s", None
        except Exception as failed:  # noqa: BLE001 - connection refused, protocol errors, ...
            error, raw = f"{type(failed).__name__}: {failed}"[:300], None
        self._count("failures")
        attempts = "attempt" if self.retries == 0 else "attempts"
        return fallback_verdict(self.fallback, self.rule, request, f"{error} ({self.retries + 1} {attempts})", raw)

    async def _attempt(self, client, semaphore: asyncio.Semaphore, request: JudgeRequest) -> Verdict:
        """One call and its score; any failure raises (`FailedCall` says whether to retry)."""
        async with semaphore:
            self._count("http_calls")
            raw = await asyncio.wait_for(self._call(client, request), self.timeout)
        score = parse_score(raw)
        if score is None:
            raise FailedCall("judge reply has no 'Score: 0|1'", retry=self.retry_unparsed, raw=raw)
        return Verdict(float(score), ok=True, raw=raw)

    async def _call(self, client, request: JudgeRequest) -> str:
        messages = [{"role": "user", "content": render_prompt(request, self.prompt_template)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with client.stream("POST", self.url, json=body, headers=headers) as response:
            if response.status_code >= 400:
                retry = response.status_code == 429 or response.status_code >= 500
                head = await self._read_capped(response, 2000, allow_cut=True)
                raise FailedCall(f"HTTP {response.status_code}", retry=retry, raw=_text(head))
            payload = await self._read_capped(response, self.max_reply_bytes)
        text = _text(payload)
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise FailedCall("reply is not a chat completion", retry=self.retry_unparsed, raw=text[:2000]) from None
        if not isinstance(content, str):
            raise FailedCall("chat completion without text content", retry=self.retry_unparsed, raw=text[:2000])
        return content

    @staticmethod
    async def _read_capped(response, limit: int, allow_cut: bool = False) -> bytes:
        """The body, read as it arrives and never more than `limit` bytes of it (a declared
        Content-Length over the limit is refused before reading)."""
        declared = response.headers.get("content-length", "")
        if not allow_cut and declared.isdigit() and int(declared) > limit:
            raise FailedCall(f"judge reply over {limit} bytes (Content-Length {declared})", retry=False)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if allow_cut:
                    break
                head = b"".join(chunks)[:2000]
                raise FailedCall(f"judge reply over {limit} bytes", retry=False, raw=_text(head))
        return b"".join(chunks)[:limit]

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[name] += amount

