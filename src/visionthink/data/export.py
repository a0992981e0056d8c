"""Write synthetic splits as a Hugging Face `DatasetDict` on disk."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Image, Value

from visionthink.data.synth import split_items

FEATURES = Features({
    "image": Image(),
    "question": Value("string"),
    "answer": Value("string"),
    "family": Value("string"),
    "question_type": Value("string"),
    "needs_high_res": Value("bool"),
    "uid": Value("string"),
})


def synth_dataset(split: str, n: int, seed: int) -> Dataset:
    items = split_items(split, n, seed)
    columns = {name: [getattr(item, name) for item in items] for name in FEATURES}
    return Dataset.from_dict(columns, features=FEATURES)


def write_synth_dataset(out: str | Path, n: int, seed: int, splits: list[str]) -> Path:
    """`n` items for each split, saved with `save_to_disk` (load with `datasets.load_from_disk`)."""
    path = Path(out)
    DatasetDict({split: synth_dataset(split, n, seed) for split in splits}).save_to_disk(str(path))
    return path
