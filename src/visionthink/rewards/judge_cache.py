"""One judge cache: successful verdicts by (question, truth, prediction), in memory and, when given a
path, in an append-only JSONL file (one line per verdict, appended once per graded batch)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path

from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict

CacheKey = tuple[str, str, str]


def cache_key(request: JudgeRequest) -> CacheKey:
    """What a verdict is remembered by: (question, truth, prediction or "")."""
    return (request.question, request.truth, request.prediction or "")


class JudgeCache:
    """Verdicts of one judge (`judge`: e.g. its model name; lines of another judge in the file are
    ignored). Only ``ok`` verdicts are kept, so a failed grade is asked again. Thread-safe; a corrupt
    or half-written line is skipped when loading, and never breaks grading."""

    def __init__(self, path: str | Path | None = None, judge: str | None = None):
        self.path = Path(path) if path else None
        self.judge = judge
        self._entries: dict[CacheKey, Verdict] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            self.load(self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self):
        """The cached keys (a live view)."""
        return self._entries.keys()

    def get(self, key: CacheKey) -> Verdict | None:
        return self._entries.get(key)

    def load(self, path: str | Path) -> int:
        """Read the verdicts of this judge from a JSONL file; returns how many. Never raises."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return 0
        loaded = 0
        for line in lines:
            try:
                entry = json.loads(line)
                if entry.get("judge") != self.judge:
                    continue
                key = (str(entry["question"]), str(entry["truth"]), str(entry["prediction"]))
                verdict = Verdict(float(entry["score"]), ok=True, raw=entry.get("raw"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            with self._lock:
                self._entries[key] = verdict
            loaded += 1
        return loaded

    def add(self, items: Iterable[tuple[CacheKey, Verdict]]) -> int:
        """Remember the ``ok`` verdicts not known yet and append them to the file in one write;
        returns how many were new. A file that cannot be written is skipped (the memory copy stays)."""
        lines = []
        with self._lock:
            for key, verdict in items:
                if not verdict.ok or key in self._entries:
                    continue
                self._entries[key] = verdict
                question, truth, prediction = key
                lines.append(json.dumps({"judge": self.judge, "question": question, "truth": truth,
                                         "prediction": prediction, "score": verdict.score, "raw": verdict.raw},
                                        ensure_ascii=False) + "\n")
            if self.path is not None and lines:
                try:
                    self._append("".join(lines))
                except OSError:
                    pass
        return len(lines)

    def _append(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            if handle.tell() > 0:  # a half-written last line (a crash mid-append) must not swallow ours
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))


def plan_batch(requests: list[JudgeRequest], cache: JudgeCache | None
               ) -> tuple[list[Verdict | None], dict[CacheKey, list[int]], int]:
    """Verdicts known without asking (empty predictions, cache hits), the indices still to grade per
    distinct key, and how many requests were cache or in-batch duplicate hits."""
    verdicts: list[Verdict | None] = [None] * len(requests)
    pending: dict[CacheKey, list[int]] = {}
    hits = 0
    for index, request in enumerate(requests):
        if not request.prediction or not str(request.prediction).strip():
            verdicts[index] = Verdict(0.0, ok=True, raw="empty prediction")
            continue
        key = cache_key(request)
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            hits += 1
            verdicts[index] = cached
            continue
        if key in pending:
            hits += 1
        pending.setdefault(key, []).append(index)
    return verdicts, pending, hits


class CachedJudge(Judge):
    """Any judge behind a `JudgeCache`: a verdict already given (in this run or, with `path`, an
    earlier one) is not asked again; failed verdicts are not kept."""

    def __init__(self, inner: Judge, path: str | Path | None = None):
        self.inner = inner
        self.name = getattr(inner, "name", "judge")
        self.cache = JudgeCache(path, judge=self.name)

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        requests = list(requests)
        keys = [cache_key(r) for r in requests]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fresh: dict[CacheKey, Verdict] = {}
        if missing:
            by_key = dict(zip(keys, requests, strict=True))
            fresh = dict(zip(missing, self.inner.grade([by_key[k] for k in missing]), strict=True))
            self.cache.add(fresh.items())
        return [self.cache.get(k) or fresh[k] for k in keys]
