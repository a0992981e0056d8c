"""Reading benchmarks in their published layouts, shared by the loader modules.

Two layouts are understood, as lmms-eval and VLMEvalKit download them:

- Hugging Face datasets as published (what lmms-eval reads): parquet shards named
  `[<config>/]<split>-NNNNN-of-MMMMM[-hash].parquet` (or `data/<split>-...`, or the
  `refs/convert/parquet` form `<config>/<split>/NNNN.parquet`), image columns stored as the
  `datasets.Image()` struct `{bytes, path}`. A folder written by `datasets.save_to_disk` is
  accepted too.
- VLMEvalKit TSVs (`$LMUData/<Name>.tsv`): columns `index`, `image` (base64 of the image file;
  a value of at most 64 characters is the `index` of the row holding the image), `question`,
  `answer`, and per-benchmark extras. Every cell is read as text (no numeric coercion).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionthink.errors import VisionThinkError
from visionthink.eval.benchmarks.base import Benchmark, Sample, Scores
from visionthink.images import ImageSource
from visionthink.rewards.judge_base import Judge, JudgeRequest

LMMS_SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
"""The post-prompt lmms-eval appends to short-answer VQA questions (DocVQA, POPE, MME)."""

_MAX_REF_LEN = 64
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are far larger than csv's 128 KiB default


@dataclass
class Source:
    """Rows read from a benchmark folder, and which published layout they came in."""

    rows: list[dict[str, Any]]
    kind: str
    """"hf" (parquet / save_to_disk, raw `datasets` rows) or "tsv" (VLMEvalKit, text cells)."""
    path: Path
    """The folder or file the rows were read from (relative image paths resolve against it)."""
    name: str
    """The benchmark's name, for error messages."""

    def each(self, key: str | None = None, hf: dict[str, str] | None = None, images: Sequence[str] = ("image",),
             optional: bool = False) -> Iterator[tuple[Any, ImageSource | None, dict[str, Any]]]:
        """(uid, image, row) for every row, whatever the layout.

        A TSV row gives its `index` and its base64 `image`. A Hugging Face row gives its `key` column (its
        position when None) and the first non-empty of its `images` (None when `optional` and the cell holds
        none); `hf` maps a field to the column that holds it there, so that both layouts read it under one
        name (DocVQA's {"answer": "answers"}).
        """
        for i, row in enumerate(self.rows):
            if self.kind == "tsv":
                yield row["index"], tsv_image(row, self.path, self.name), row
                continue
            uid = i if key is None else row[key]
            cell = next((row[column] for column in images if row.get(column)), row.get(images[-1]))
            where = f"row {i}" if key is None else f"{key} {uid}"
            renamed = {field: row.get(column) for field, column in (hf or {}).items()}
            yield uid, hf_image(cell, self.path, self.name, where, optional), {**row, **renamed}


def fail(name: str, layout: str, why: str) -> VisionThinkError:
    return VisionThinkError(f"{name}: {why}.\nExpected layout:\n{layout}")


def open_source(root: str | os.PathLike | None, benchmark: Benchmark, limit: int | None, *, tsv_names: Sequence[str],
                hf_columns: Iterable[str], tsv_columns: Iterable[str], splits: Sequence[Sequence[str]] = (("test",),),
                configs: Sequence[str] = (), exclude: Sequence[str] = ()) -> Source:
    """Find and read a benchmark under `root` (HF parquet, `save_to_disk`, or a VLMEvalKit TSV).

    `splits` lists alternatives (by default `test`), each a list of split names read one after the
    other (POPE's `test`, or its `Full` config's `adversarial`/`popular`/`random`). Parquet files under
    a folder named in `configs` are preferred; those under a folder named in `exclude` are ignored.
    """
    name, layout = benchmark.name, benchmark.layout
    if limit is not None and limit < 0:
        raise VisionThinkError(f"{name}: limit must be >= 0, got {limit}")
    if root is None or str(root) == "":
        raise fail(name, layout, "no benchmark folder given")
    path = Path(root).expanduser()
    if not path.exists():
        raise fail(name, layout, f"{path} does not exist")
    tsv = _tsv_file(path, tsv_names)
    if tsv is not None:
        rows = _read_tsv(tsv, name, layout, limit)
        _require(rows, tsv_columns, name, layout, tsv)
        return Source(rows, "tsv", tsv.parent, name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        rows = _read_saved(path, splits, name, layout, limit)
        _require(rows, hf_columns, name, layout, path)
        return Source(rows, "hf", path, name)
    for alternative in splits:
        files = {split: _parquet_files(path, split, configs, exclude) for split in alternative}
        if all(files.values()):
            rows = _read_parquet(files, name, layout, limit)
            _require(rows, hf_columns, name, layout, path)
            return Source(rows, "hf", path if path.is_dir() else path.parent, name)
    raise fail(name, layout, f"found no {' or '.join(n + '.tsv' for n in tsv_names)} and no parquet shards "
                             f"for split {' / '.join('+'.join(a) for a in splits)} under {path}")


# ---------------------------------------------------------------- Hugging Face layouts


def _parquet_files(root: Path, split: str, configs: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix == ".parquet" and _is_split_file(root.name, split, ()) else []
    found = []
    for file in sorted(root.rglob("*.parquet")):
        folders = file.relative_to(root).parts[:-1]
        if any(folder in exclude or folder.startswith(".") for folder in folders):
            continue
        if _is_split_file(file.name, split, folders):
            found.append(file)
    preferred = [f for f in found if any(folder in configs for folder in f.relative_to(root).parts[:-1])]
    return preferred or found


def _is_split_file(filename: str, split: str, folders: Sequence[str]) -> bool:
    stem = filename.removesuffix(".parquet")
    return stem == split or stem.startswith(f"{split}-") or (bool(folders) and folders[-1] == split)


def _read_parquet(files: dict[str, list[Path]], name: str, layout: str, limit: int | None) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for split, paths in files.items():
        for file in paths:
            try:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
                    for row in batch.to_pylist():
                        if limit is not None and len(rows) >= limit:
                            return rows
                        row["__split__"] = split
                        rows.append(row)
            except (pa.ArrowException, OSError) as error:
                raise fail(name, layout, f"cannot read {file}: {error}") from error
    return rows


def _read_saved(path: Path, splits: Sequence[Sequence[str]], name: str, layout: str,
                limit: int | None) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - datasets raises many types for a broken folder
        raise fail(name, layout, f"cannot load the datasets folder {path}: {error}") from error
    if not isinstance(loaded, DatasetDict):
        parts = [("", loaded)]
    else:
        chosen = next((alt for alt in splits if all(s in loaded for s in alt)), None)
        if chosen is None:
            raise fail(name, layout, f"{path} holds splits {sorted(loaded)}, none of "
                                     f"{' / '.join('+'.join(a) for a in splits)}")
        parts = [(split, loaded[split]) for split in chosen]
    rows: list[dict[str, Any]] = []
    for split, dataset in parts:
        take = len(dataset) if limit is None else min(len(dataset), limit - len(rows))
        if take <= 0:
            break
        for row in dataset.with_format("arrow")[:take].to_pylist():  # images stay {bytes, path}
            row["__split__"] = split
            rows.append(row)
    return rows


def hf_image(value: Any, base: Path, name: str, where: str, optional: bool = False) -> ImageSource | None:
    """An image cell of a `datasets` row: the `{bytes, path}` struct, raw bytes, a PIL image or a path;
    None for a cell that holds no path nor bytes (None, blank) when `optional`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if isinstance(value, str) and value.strip():
        candidate = Path(value)
        for file in (candidate, base / candidate):
            if file.is_file():
                return file
        raise VisionThinkError(f"{name}: {where}: image {value!r} is not embedded and not found under {base}")
    if value is not None and hasattr(value, "convert"):  # a decoded PIL image
        return value
    if optional and (value is None or isinstance(value, str)):
        return None
    raise VisionThinkError(f"{name}: {where}: no image")


# ---------------------------------------------------------------- VLMEvalKit TSV


def _tsv_file(path: Path, names: Sequence[str]) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() == ".tsv" else None
    return next((file for file in (path / f"{name}.tsv" for name in names) if file.is_file()), None)


def _read_tsv(path: Path, name: str, layout: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows: list[dict[str, Any]] = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise fail(name, layout, f"cannot read {path}: {error}") from error
    if rows and "index" in rows[0] and "image" in rows[0]:
        images = {row["index"]: row["image"] for row in rows if len(row.get("image") or "") > _MAX_REF_LEN}
        for row in rows:
            cell = (row.get("image") or "").strip()
            if cell and len(cell) <= _MAX_REF_LEN:
                if cell not in images:
                    raise fail(name, layout, f"{path}: row index {row['index']} refers to image {cell!r}, "
                                             "which no row holds")
                row["__image_key__"], row["image"] = cell, images[cell]
            else:
                row["__image_key__"] = row["index"]
    return rows if limit is None else rows[:limit]


def tsv_image(row: dict[str, Any], base: Path, name: str) -> ImageSource:
    """The image bytes of a TSV row (base64 in `image`, or a file named by `image_path`)."""
    cell = (row.get("image") or "").strip()
    if cell.startswith("["):  # multi-image rows hold a repr list; the first image is the one shown
        listed = parse_list(cell)
        cell = listed[0] if listed else ""
    if cell:
        try:
            return base64.b64decode(cell, validate=False)
        except (binascii.Error, ValueError) as error:
            raise VisionThinkError(f"{name}: row index {row.get('index')}: image is not valid base64") from error
    image_path = (row.get("image_path") or "").strip()
    if image_path and (base / image_path).is_file():
        return base / image_path
    raise VisionThinkError(f"{name}: row index {row.get('index')}: no image")


def parse_list(cell: Any) -> list[str] | None:
    """A list cell: a real list, or (TSV) a Python-repr list such as "['0.28']"; None if not a list."""
    if isinstance(cell, (list, tuple)):
        return [str(item) for item in cell]
    text = cell.strip() if isinstance(cell, str) else ""
    value = _literal(text) if text.startswith("[") and text.endswith("]") else None
    return [str(item) for item in value] if isinstance(value, (list, tuple)) else None


def parse_dict(cell: Any) -> dict[str, Any]:
    """A dict cell: a real dict (HF struct), or (TSV) a Python-repr dict; {} otherwise."""
    if isinstance(cell, dict):
        return cell
    value = _literal(cell.strip()) if isinstance(cell, str) and cell.strip().startswith("{") else None
    return value if isinstance(value, dict) else {}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def answers_of(cell: Any) -> str | list[str]:
    """An answer cell as a string, or a list of strings when it holds several accepted answers."""
    listed = parse_list(cell)
    if listed is not None:
        return listed
    return "" if cell is None else str(cell)


def _require(rows: list[dict[str, Any]], columns: Iterable[str], name: str, layout: str, path: Path) -> None:
    if not rows:
        return
    missing = [column for column in columns if column not in rows[0]]
    if missing:
        present = sorted(k for k in rows[0] if not k.startswith("__"))
        raise fail(name, layout, f"{path} lacks column(s) {missing}; it has {present}")


# ---------------------------------------------------------------- scoring helpers


def check_predictions(name: str, samples: list, predictions: list) -> None:
    if len(samples) != len(predictions):
        raise VisionThinkError(f"{name}: {len(predictions)} predictions for {len(samples)} samples")


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def group_scores(per_sample: list[float], groups: list[Iterable[str]], prefix: str = "score/") -> dict[str, float]:
    """Mean score per group; a sample may belong to several groups (e.g. MM-Vet capabilities)."""
    members: dict[str, list[float]] = {}
    for score, names in zip(per_sample, groups, strict=True):
        for group in dict.fromkeys(names):
            if group:
                members.setdefault(group, []).append(score)
    return {f"{prefix}{group}": mean(values) for group, values in sorted(members.items())}


def regrade(name: str, judge: Judge, samples: list[Sample], predictions: list[str | None], grades: list[float],
            indices: Sequence[int]) -> tuple[list[float], int]:
    """`grades` with the answers at `indices` graded again by `judge` (a failing verdict keeps the grade it
    had), and the number of failing verdicts."""
    requests = [JudgeRequest(samples[i].meta.get("raw_question", samples[i].question), _truth(samples[i].answer),
                             predictions[i]) for i in indices]
    verdicts = judge.grade(requests)
    if len(verdicts) != len(requests):
        raise VisionThinkError(f"{name}: judge {judge.name!r} returned {len(verdicts)} verdicts "
                               f"for {len(requests)} requests")
    regraded = list(grades)
    for i, verdict in zip(indices, verdicts, strict=True):
        if verdict.ok:
            regraded[i] = clip01(verdict.score)
    return regraded, sum(not v.ok for v in verdicts)


def _truth(answer: str | list[str]) -> str:
    """Several accepted answers as the judge reads them: joined by " <OR> "."""
    return answer if isinstance(answer, str) else " <OR> ".join(answer)


def clip01(value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, value)) if value == value else 0.0


def rules_then_judge(name: str, samples: list[Sample], predictions: list[str | None], rules: list[float],
                     judge: Judge | None, groups: list[Iterable[str]]) -> Scores:
    """The rules' per-sample grades, the answers they mark wrong graded again by `judge` if any:
    summary `rules`, `judge_failures` (with a judge), `score` and `score/<group>`."""
    summary: dict[str, float] = {"n": len(samples), "rules": mean(rules)}
    per_sample = rules
    if judge is not None:
        missed = [i for i, ok in enumerate(rules) if ok < 1.0 and predictions[i]]
        per_sample, summary["judge_failures"] = regrade(name, judge, samples, predictions, rules, missed)
    summary["score"] = mean(per_sample)
    summary.update(group_scores(per_sample, groups))
    return Scores(per_sample, summary)
