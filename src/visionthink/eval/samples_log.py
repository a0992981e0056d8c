"""`samples.jsonl`: one JSON record per (bench, mode, uid), appended as batches finish; read back with torn
or duplicate lines dropped, so a killed eval resumes where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return str(record["bench"]), str(record["mode"]), str(record["uid"])


def read_samples(path: Path, repair: bool = True) -> list[dict[str, Any]]:
    """Every complete record of a samples log, first occurrence of each key kept.

    A run killed while writing can leave a torn last line; with `repair`, the file is rewritten
    without torn or duplicate lines, so that appending goes on from a clean line boundary.
    """
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, seen, dirty = [], set(), bool(raw) and not raw.endswith(b"\n")
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = record_key(record)
        except (ValueError, KeyError, TypeError):
            dirty = True
            continue
        if key in seen:
            dirty = True
            continue
        seen.add(key)
        records.append(record)
    if dirty and repair:
        temporary = path.with_suffix(".jsonl.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    return records


class SampleLog:
    """Append-only JSONL of finished samples; every batch is flushed as soon as it is written."""

    def __init__(self, path: Path):
        self.path = path
        self.records = read_samples(path)
        self.keys = {record_key(r) for r in self.records}

    def done(self, bench: str, mode: str, uid: str) -> bool:
        return (bench, mode, uid) in self.keys

    def append(self, records: list[dict[str, Any]]) -> None:
        fresh = [r for r in records if record_key(r) not in self.keys]
        if not fresh:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh))
            handle.flush()
            os.fsync(handle.fileno())
        for record in fresh:
            self.keys.add(record_key(record))
            self.records.append(record)

    def select(self, bench: str, mode: str) -> dict[str, dict[str, Any]]:
        return {str(r["uid"]): r for r in self.records if r["bench"] == bench and r["mode"] == mode}
