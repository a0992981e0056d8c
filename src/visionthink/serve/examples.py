"""The web page's example gallery: images and questions from a folder (`ServeConfig.examples_dir`).

The folder holds `questions.json`, a list of `{"file", "question", ...}` objects, and the images it names. Everything
is read once, when the app is built, and served from memory: a request names an example by its file name, which is
looked up in that index, never joined to a path, so nothing outside the folder (nor any file of it that the index
does not list) can be served.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INDEX = "questions.json"
MAX_EXAMPLES = 32
MAX_EXAMPLE_BYTES = 1 << 20
"""Bytes of one example image (the synthetic world's are a few KB)."""
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DESCRIBED = ("question", "answer", "title", "needs_high_res", "family")
"""The fields of an index entry that `GET /examples` passes on (besides the file name and its URL)."""


@dataclass(frozen=True)
class Example:
    """One example: its image's bytes and what the index says about it."""

    file: str
    data: bytes
    media_type: str
    info: dict[str, Any]


def default_examples_dir() -> Path | None:
    """The checkout's `examples/` folder (next to `src/`) when this package runs from a checkout that has one."""
    folder = Path(__file__).resolve().parents[3] / "examples"
    return folder if (folder / INDEX).is_file() else None


def load_examples(folder: Path | str | None) -> dict[str, Example]:
    """The examples of `folder` by file name; an entry that is malformed, or names a file that is missing, outside
    the folder, too large or of another kind, is left out with a warning (the server starts without it)."""
    if folder is None:
        return {}
    root = Path(folder).resolve()
    try:
        entries = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("no example gallery: cannot read %s: %s", root / INDEX, error)
        return {}
    if not isinstance(entries, list):
        log.warning("no example gallery: %s is not a list of examples", root / INDEX)
        return {}
    examples: dict[str, Example] = {}
    for entry in entries[:MAX_EXAMPLES]:
        example = _example(root, entry)
        if example is not None:
            examples[example.file] = example
    return examples


def _example(root: Path, entry: Any) -> Example | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(
            entry.get("question"), str):
        log.warning("example left out: %r is not {\"file\": ..., \"question\": ...}", entry)
        return None
    name = entry["file"]
    media_type = MEDIA_TYPES.get(Path(name).suffix.lower())
    if not _NAME.fullmatch(name) or media_type is None:
        log.warning("example left out: %r is not a plain image file name (%s)", name, ", ".join(MEDIA_TYPES))
        return None
    path = (root / name).resolve()
    if path.parent != root or not path.is_file() or path.stat().st_size > MAX_EXAMPLE_BYTES:
        log.warning("example left out: %s is not a file of at most %d bytes in %s", name, MAX_EXAMPLE_BYTES, root)
        return None
    info = {key: entry[key] for key in _DESCRIBED if key in entry}
    return Example(name, path.read_bytes(), media_type, info)


def gallery(examples: dict[str, Example]) -> list[dict[str, Any]]:
    """What `GET /examples` lists: each example's file, its URL on this server and its index fields."""
    return [{"file": name, "url": f"/examples/{name}", **example.info} for name, example in examples.items()]
