"""Accuracy judges behind the `Judge` interface: rule-based, any OpenAI-compatible HTTP endpoint, a local LM.

Every judge sees only the question, the ground truth and the final answer text (never the image)
and returns one `Verdict` per request, in order, without ever raising. An LLM judge is asked to
end its reply with ``Score: 0`` or ``Score: 1``; the LAST such line decides (the release counted a
reply as correct when the character "1" appeared anywhere in it; we do not).

When an LLM judge cannot grade (backend down, timeout, HTTP error, a reply without a score), the
`fallback` decides the verdict: ``"rule"`` grades with `RuleJudge` instead, ``"drop"`` gives score 0.
Either way the verdict has ``ok=False`` and ``error`` set, so a trainer can also drop the rollout group
as the release does (see `visionthink.rewards.rewards.failed_groups`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import random
import re
import string
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from visionthink.eval.scoring import normalize
from visionthink.protocol import extract_answer
from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict

Fallback = Literal["rule", "drop"]
FALLBACKS = ("rule", "drop")

JUDGE_SYSTEM = "You are a careful and impartial grader of answers to questions about images."
JUDGE_PROMPT = """\
Decide whether a model's answer to a question about an image is correct, given the ground-truth answer.
You do not see the image; compare the model's answer with the ground truth only.

Rules:
- Accept synonyms, paraphrases and different formatting of the same answer (for example "2" and "two", \
"car" and "automobile", "(B) cat" and "cat" when option B is cat).
- Be strict on definitive answers: a different value, a different option, a refusal, or hedging between \
several answers is wrong.
- Be strict on units and magnitudes: a number with a wrong or missing required unit, or a wrong scale, is wrong.
- Ignore the explanation around the answer; grade only the final answer it gives.

Question: {question}
Ground-truth answer: {truth}
Model's answer: {prediction}

Explain briefly, then end your reply with a line that is exactly "Score: 1" if the model's answer is \
correct or "Score: 0" if it is not."""

_PLACEHOLDER = re.compile(r"\{(question|truth|prediction)\}")
# Matched against the lower-cased reply. Linear time on any input, and fast: the pattern starts with a
# literal, so the engine jumps from one "score" to the next, and each run of blanks or asterisks after
# one is read at most 64 characters far, once (the old `\**\s*...\s*\**\s*` tried every way to split
# a run: "Score:" + 32,000 spaces took 21 s).
_SCORE = re.compile(r"score(?<!\wscore)\b[\s*]{0,64}+[:：][\s*]{0,64}+([01])(?:\.0{0,64}+)?(?![\d.])")
_YES_NO = re.compile(r"\[\[\s{0,64}+(yes|no)\s{0,64}+\]\]")


def render_prompt(request: JudgeRequest, template: str = JUDGE_PROMPT) -> str:
    """The judge prompt for one request (placeholders filled in one pass, so answers cannot inject them)."""
    values = {"question": request.question, "truth": request.truth, "prediction": request.prediction or ""}
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def parse_score(text: str | None) -> int | None:
    """The LAST ``Score: 0|1`` in a judge reply (case-insensitive), or None when there is none.

    "score" must be a whole word ("Subscore: 1" is not a score); up to 64 blanks and asterisks may
    surround the colon (``**Score:** 1``); "1.0" counts, "10", "0.5" and "01" do not. Linear time:
    10 MB take well under a second.
    """
    if not isinstance(text, str):
        return None
    matches = _SCORE.findall(text.lower())
    return int(matches[-1]) if matches else None


def parse_judgement(text: str | None) -> int | None:
    """The last verdict in a reply: whichever of ``Score: 0|1`` or ``[[YES]]``/``[[NO]]`` comes last."""
    if not isinstance(text, str):
        return None
    text = text.lower()
    found: list[tuple[int, int]] = [(m.start(), int(m.group(1))) for m in _SCORE.finditer(text)]
    found += [(m.start(), int(m.group(1) == "yes")) for m in _YES_NO.finditer(text)]
    return max(found)[1] if found else None


# ---------------------------------------------------------------- rule-based


_CHOICE_INLINE = re.compile(r"\(([A-Za-z])\)\s*(.+?)(?=\s*\([A-Za-z]\)|\n|$)")
_CHOICE_LINE = re.compile(r"^\s*([A-Za-z])[.:)]\s+(.+?)\s*$", re.MULTILINE)
_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LETTER_PREFIX = re.compile(r"^\(?([A-Za-z])[.:)]\s*\S")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MINUS = re.compile(r"(?<![\w.])-(?=\d)")


def _unwrap(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    if "<answer>" in text or "\\boxed{" in text:
        inner = extract_answer(text)
        if inner is not None:
            text = inner
    return text


def to_number(text: str | None) -> float | None:
    """A number written plainly (``1,234.5``, ``-3``, ``45%``, ``$12``, ``3/4``), else None."""
    if text is None:
        return None
    text = _THOUSANDS.sub("", text.strip().rstrip("."))
    text = text.removeprefix("$").removesuffix("%")
    if _NUMBER.match(text):
        return float(text)
    if text.count("/") == 1:
        top, bottom = text.split("/")
        if _NUMBER.match(top) and _NUMBER.match(bottom) and float(bottom) != 0:
            return float(top) / float(bottom)
    return None


def rule_normalize(text: str | None) -> str:
    """`scoring.normalize`, but a decimal point, a comma or a minus sign inside a number survives
    (``3.5`` != ``35``), and a lone article stays (the option ``A`` is not the empty string)."""
    if text is None:
        return ""
    text = _DECIMAL_POINT.sub("\x00", str(text))
    text = _DIGIT_COMMA.sub("\x01", text)
    text = _MINUS.sub("\x02", text)
    result = normalize(text)
    if not result:
        result = " ".join(text.lower().translate(_NO_PUNCTUATION).split())
    return result.replace("\x00", ".").replace("\x01", ",").replace("\x02", "-")


def parse_choices(question: str) -> dict[str, str]:
    """Options given in a question as ``(A) cat (B) dog`` or one ``A. cat`` / ``A: cat`` per line."""
    choices: dict[str, str] = {}
    for letter, text in _CHOICE_INLINE.findall(question or ""):
        choices.setdefault(letter.upper(), text.strip())
    if len(choices) < 2:
        choices = {}
        for letter, text in _CHOICE_LINE.findall(question or ""):
            choices.setdefault(letter.upper(), text.strip())
    return choices if len(choices) >= 2 else {}


def choice_letter(text: str, choices: dict[str, str]) -> str | None:
    """Which option an answer picks: a bare letter, a letter prefix (``B. dog``) or the option's text."""
    text = text.strip()
    bare = _BARE_LETTER.match(text)
    if bare and bare.group(1).upper() in choices:
        return bare.group(1).upper()
    prefixed = _LETTER_PREFIX.match(text)
    if prefixed and prefixed.group(1).upper() in choices:
        return prefixed.group(1).upper()
    wanted = rule_normalize(text)
    matching = [letter for letter, option in choices.items() if rule_normalize(option) == wanted and wanted]
    return matching[0] if len(matching) == 1 else None


try:  # optional: symbolic math verification when the package is installed
    import math_verify as _math_verify
except ImportError:  # pragma: no cover - depends on the install
    _math_verify = None


def math_equal(truth: str, prediction: str) -> bool:
    """`math_verify`'s verdict when the package is importable; False when it is not or it fails."""
    if _math_verify is None:
        return False
    try:
        try:  # no signal-based timeouts: they only work in the main thread
            gold = _math_verify.parse(truth, parsing_timeout=None)
            answer = _math_verify.parse(prediction, parsing_timeout=None)
            return bool(_math_verify.verify(gold, answer, timeout_seconds=None))
        except TypeError:
            return bool(_math_verify.verify(_math_verify.parse(truth), _math_verify.parse(prediction)))
    except Exception:  # noqa: BLE001 - a grader must not raise on odd answers
        return False


class RuleJudge(Judge):
    """Grades without a model: numbers by value, multiple choice by option, text by normalised match, then math.

    In order: an empty answer is wrong; two numbers compare with relative tolerance `rel_tol`
    (and `abs_tol`) and nothing else; when the question lists options (``(A) cat``) and both answers
    name one, the options compare; otherwise normalised exact match; last, `math_verify` when installed.
    `Verdict.raw` names the rule that decided.
    """

    name = "rule"

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 1e-9, use_math_verify: bool = True):
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.use_math_verify = use_math_verify

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        return [self.grade_one(request) for request in requests]

    def grade_one(self, request: JudgeRequest) -> Verdict:
        try:
            score, rule = self._decide(request)
        except Exception as error:  # noqa: BLE001 - never raise on odd inputs
            return Verdict(0.0, ok=False, raw="error", error=f"rule judge failed: {type(error).__name__}")
        return Verdict(float(score), ok=True, raw=rule)

    def _decide(self, request: JudgeRequest) -> tuple[int, str]:
        prediction = _unwrap(request.prediction)
        truth = _unwrap(request.truth) or ""
        if not prediction:
            return 0, "empty"
        a, b = to_number(prediction), to_number(truth)
        if a is not None and b is not None:
            close = math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
            return int(close), "numeric"
        choices = parse_choices(request.question)
        if choices:
            picked, wanted = choice_letter(prediction, choices), choice_letter(truth, choices)
            if picked is not None and wanted is not None:
                return int(picked == wanted), "choice"
        left, right = rule_normalize(prediction), rule_normalize(truth)
        if left and left == right:
            return 1, "exact"
        if self.use_math_verify and math_equal(truth, prediction):
            return 1, "math"
        return 0, "mismatch"


# ---------------------------------------------------------------- shared LLM-judge plumbing


def _check_fallback(fallback: str) -> str:
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    return fallback


def _fallback_verdict(
    fallback: str, rule: RuleJudge, request: JudgeRequest, error: str, raw: str | None = None
) -> Verdict:
    if fallback == "rule":
        score = rule.grade_one(request).score
    else:
        score = 0.0
    return Verdict(score, ok=False, raw=raw, error=error)


CacheKey = tuple[str, str, str]


def _key(request: JudgeRequest) -> CacheKey:
    return (request.question, request.truth, request.prediction or "")


def _plan(requests: list[JudgeRequest], cache: dict | None
          ) -> tuple[list[Verdict | None], dict[CacheKey, list[int]], int]:
    """Verdicts known without asking (empty predictions, cache hits), the indices still to grade
    per distinct (question, truth, prediction), and how many requests were cache or batch hits."""
    verdicts: list[Verdict | None] = [None] * len(requests)
    pending: dict[CacheKey, list[int]] = {}
    hits = 0
    for index, request in enumerate(requests):
        if not request.prediction or not str(request.prediction).strip():
            verdicts[index] = Verdict(0.0, ok=True, raw="empty prediction")
            continue
        key = _key(request)
        cached = cache.get(key) if cache is not None else None
        if cached is not None or key in pending:
            hits += 1
            if cached is not None:
                verdicts[index] = cached
                continue
        pending.setdefault(key, []).append(index)
    return verdicts, pending, hits


class _FailedCall(Exception):
    """One HTTP attempt that did not produce a score; `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool, raw: str | None = None):
        super().__init__(message)
        self.retry = retry
        self.raw = raw


# ---------------------------------------------------------------- HTTP (OpenAI-compatible)

MAX_REPLY_BYTES = 1 << 20
"""Largest judge reply body read (1 MiB): a verdict of a few hundred tokens is a few KB."""
BATCH_TIMEOUT = 600.0
"""Seconds one `HTTPJudge.grade()` call may take in all before unanswered requests fall back."""


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


class HTTPJudge(Judge):
    """An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, OpenAI, ...).

    - `concurrency` requests at most in flight (a semaphore), each bounded by `timeout` seconds in all.
    - Connection errors, timeouts, HTTP 429/5xx and replies without a score are retried `retries`
      times, waiting ``backoff * 2**(n-1)`` seconds before the n-th retry (capped at `backoff_max`,
      plus up to `jitter` of it at random); other HTTP errors (401, 404, ...) are not retried.
    - `api_key` (sent as a Bearer token) defaults to the ``VISIONTHINK_JUDGE_API_KEY`` variable; a
      local server needs none.
    - Successful verdicts are cached in memory by (question, truth, prediction), and in `cache_path`
      (JSON) when given; duplicates within a batch are sent once. A request without a prediction is
      graded 0 without a call.
    - After the last failed attempt, `fallback` decides the verdict (``ok=False``, ``error`` set).
    - A reply body over `max_reply_bytes` (1 MiB) is cut off there and not retried (a judge asked for
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
        self.fallback = _check_fallback(fallback)
        self.use_cache = cache
        self.cache_path = Path(cache_path) if cache_path else None
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
        self.cache: dict[CacheKey, Verdict] = {}
        self.stats = {"requests": 0, "cache_hits": 0, "http_calls": 0, "retries": 0, "failures": 0}
        self._lock = threading.Lock()
        if self.cache_path is not None:
            self.load_cache(self.cache_path)

    @staticmethod
    def completions_url(base_url: str) -> str:
        """``<base_url>/chat/completions`` unless `base_url` already ends with it."""
        url = base_url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    # ------------------------------------------------------------ cache

    def load_cache(self, path: str | Path) -> int:
        """Load verdicts saved for this judge's model from `path`; returns how many. Never raises."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        if not isinstance(data, dict) or data.get("model") != self.model:
            return 0
        loaded = 0
        for entry in data.get("entries", []):
            try:
                key = (str(entry["question"]), str(entry["truth"]), str(entry["prediction"]))
                self.cache[key] = Verdict(float(entry["score"]), ok=True, raw=entry.get("raw"))
                loaded += 1
            except (KeyError, TypeError, ValueError):
                continue
        return loaded

    def save_cache(self, path: str | Path | None = None) -> None:
        """Write the cache as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path or self.cache_path or "")
        if not str(path):
            raise ValueError("no cache path")
        with self._lock:
            entries = [
                {"question": q, "truth": t, "prediction": p, "score": v.score, "raw": v.raw}
                for (q, t, p), v in self.cache.items()
            ]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"model": self.model, "entries": entries}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

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
        verdicts, pending, hits = _plan(requests, self.cache if self.use_cache else None)
        self._count("cache_hits", hits)
        if pending:
            httpx = _httpx()
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            semaphore = asyncio.Semaphore(self.concurrency)
            keys = list(pending)
            async with httpx.AsyncClient(limits=limits, timeout=self.timeout, trust_env=self.trust_env) as client:
                tasks = [asyncio.ensure_future(self._grade_key(client, semaphore, requests[pending[key][0]]))
                         for key in keys]
                done, late = await asyncio.wait(tasks, timeout=self.batch_timeout)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.gather(*late, return_exceptions=True)
            results = []
            for key, task in zip(keys, tasks, strict=True):
                if task in done and not task.cancelled():
                    results.append(task.result())
                    continue
                self._count("failures")
                error = f"batch deadline of {self.batch_timeout:g}s passed before the judge replied"
                results.append(_fallback_verdict(self.fallback, self.rule, requests[pending[key][0]], error))
            for key, verdict in zip(keys, results, strict=True):
                for index in pending[key]:
                    verdicts[index] = verdict
                if verdict.ok and self.use_cache:
                    with self._lock:
                        self.cache[key] = verdict
            if self.cache_path is not None and self.use_cache and any(v.ok for v in results):
                try:
                    self.save_cache()
                except OSError:
                    pass
        return [v for v in verdicts if v is not None]

    async def _grade_key(self, client, semaphore: asyncio.Semaphore, request: JudgeRequest) -> Verdict:
        error, raw = "no attempt", None
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (1 + self.jitter * random.random()))
            try:
                async with semaphore:
                    self._count("http_calls")
                    raw = await asyncio.wait_for(self._call(client, request), self.timeout)
            except _FailedCall as failed:
                error, raw = str(failed), failed.raw
                if not failed.retry:
                    break
                continue
            except TimeoutError:
                error = f"timed out after {self.timeout:g}s"
                continue
            except Exception as failed:  # noqa: BLE001 - connection refused, protocol errors, ...
                error = f"{type(failed).__name__}: {failed}"[:300]
                continue
            score = parse_score(raw)
            if score is not None:
                return Verdict(float(score), ok=True, raw=raw)
            error = "judge reply has no 'Score: 0|1'"
            if not self.retry_unparsed:
                break
        self._count("failures")
        attempts = "attempt" if self.retries == 0 else "attempts"
        return _fallback_verdict(self.fallback, self.rule, request, f"{error} ({self.retries + 1} {attempts})", raw)

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
                raise _FailedCall(f"HTTP {response.status_code}", retry=retry, raw=_text(head))
            payload = await self._read_capped(response, self.max_reply_bytes)
        text = _text(payload)
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _FailedCall("reply is not a chat completion", retry=self.retry_unparsed, raw=text[:2000]) from None
        if not isinstance(content, str):
            raise _FailedCall("chat completion without text content", retry=self.retry_unparsed, raw=text[:2000])
        return content

    @staticmethod
    async def _read_capped(response, limit: int, allow_cut: bool = False) -> bytes:
        """The body, read as it arrives and never more than `limit` bytes of it (a declared
        Content-Length over the limit is refused before reading)."""
        declared = response.headers.get("content-length", "")
        if not allow_cut and declared.isdigit() and int(declared) > limit:
            raise _FailedCall(f"judge reply over {limit} bytes (Content-Length {declared})", retry=False)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if allow_cut:
                    break
                head = b"".join(chunks)[:2000]
                raise _FailedCall(f"judge reply over {limit} bytes", retry=False, raw=_text(head))
        return b"".join(chunks)[:limit]

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[name] += amount


# ---------------------------------------------------------------- local transformers model


class LocalJudge(Judge):
    """A local causal LM as judge (e.g. a small Qwen3), prompted like `HTTPJudge`, greedy decoding.

    `model` is a folder for ``AutoModelForCausalLM`` (loaded with ``local_files_only``: nothing is
    downloaded) or an already loaded model, with `tokenizer` then required. Replies are parsed for
    the last ``Score: 0|1`` or ``[[YES]]``/``[[NO]]``; a reply with neither, or a generation error,
    falls back as in `HTTPJudge`. `stats` counts ``requests``, ``cache_hits``, ``failures``.
    """

    name = "local"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        fallback: Fallback = "rule",
        cache: bool = True,
        prompt_template: str = JUDGE_PROMPT,
        system_prompt: str | None = JUDGE_SYSTEM,
        chat_template_kwargs: dict[str, Any] | None = None,
        device: str | None = None,
        dtype: Any = "auto",
        rule_judge: RuleJudge | None = None,
    ):
        if isinstance(model, str | os.PathLike):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        elif tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.fallback = _check_fallback(fallback)
        self.use_cache = cache
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.rule = rule_judge or RuleJudge()
        self.cache: dict[CacheKey, Verdict] = {}
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0}

    def prompt_text(self, request: JudgeRequest) -> str:
        """The full model input for one request (the chat template when the tokenizer has one)."""
        user = render_prompt(request, self.prompt_template)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": user}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
            )
        system = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        return f"{system}{user}\n"

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        requests = list(requests)
        self.stats["requests"] += len(requests)
        verdicts, pending, hits = _plan(requests, self.cache if self.use_cache else None)
        self.stats["cache_hits"] += hits
        keys = list(pending)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            chunk_requests = [requests[pending[key][0]] for key in chunk]
            for key, verdict in zip(chunk, self._judge(chunk_requests), strict=True):
                if verdict.ok and self.use_cache:
                    self.cache[key] = verdict
                for index in pending[key]:
                    verdicts[index] = verdict
        return [v for v in verdicts if v is not None]

    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        try:
            replies = self.generate([self.prompt_text(request) for request in requests])
        except Exception as error:  # noqa: BLE001 - the judge must never raise
            self.stats["failures"] += len(requests)
            message = f"generation failed: {type(error).__name__}: {error}"[:300]
            return [_fallback_verdict(self.fallback, self.rule, r, message) for r in requests]
        verdicts = []
        for request, reply in zip(requests, replies, strict=True):
            score = parse_judgement(reply)
            if score is None:
                self.stats["failures"] += 1
                error = "judge reply has no 'Score: 0|1' nor [[YES]]/[[NO]]"
                verdicts.append(_fallback_verdict(self.fallback, self.rule, request, error, reply))
            else:
                verdicts.append(Verdict(float(score), ok=True, raw=reply))
        return verdicts

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuations of `prompts` (left-padded batch), special tokens removed."""
        import torch

        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        previous_side = getattr(tokenizer, "padding_side", "left")
        tokenizer.padding_side = "left"
        try:
            batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = previous_side
        device = next(self.model.parameters()).device
        batch = {name: tensor.to(device) for name, tensor in batch.items() if name in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


# ---------------------------------------------------------------- factory


def make_judge(spec: str, **kwargs: Any) -> Judge:
    """A judge from a short spec: ``rule``, ``http:<base_url>[#model]`` (or a bare URL), ``local:<path>``.

    Keyword arguments go to the judge's constructor.
    """
    spec = spec.strip()
    if spec == "rule":
        return RuleJudge(**kwargs)
    if spec.startswith("local:"):
        path = spec.removeprefix("local:")
        if not path:
            raise ValueError("local judge needs a path: local:<folder>")
        return LocalJudge(path, **kwargs)
    url = None
    if spec.startswith("http:") and not spec.startswith("http://"):
        url = spec.removeprefix("http:")
    elif spec.startswith(("http://", "https://")):
        url = spec
    if url is not None:
        url, _, model = url.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"http judge needs a URL: http:<http(s)://host[:port]/v1>[#model], got {spec!r}")
        if model:
            kwargs["model"] = model
        return HTTPJudge(url, **kwargs)
    raise ValueError(f"unknown judge spec {spec!r}: use 'rule', 'http:<base_url>[#model]' or 'local:<path>'")
