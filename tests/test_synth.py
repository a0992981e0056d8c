"""Tests for `visionthink.data.synth`: determinism, families, splits, answers, and a legibility probe."""

from __future__ import annotations

import functools
import hashlib
import time

import numpy as np
import pytest

from visionthink.data.synth import (
    COLOURS,
    FAMILIES,
    IMAGE_SIZE,
    LABEL_SIZE,
    PATTERNS,
    QUESTIONS,
    SHAPES,
    answer_for,
    make_item,
    make_scene,
    scene_items,
    split_items,
)
from visionthink.images import PixelGrid, make_views

ANSWER_SETS = {
    "colour": set(COLOURS),
    "shape": set(SHAPES),
    "count": {"1", "2", "3"},
    "pattern": set(PATTERNS),
}


def image_hash(image) -> str:
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


# ---------------------------------------------------------------- items


def test_make_item_is_deterministic():
    for seed, index in ((0, 0), (0, 1), (5, 2), (123, 77)):
        a, b = make_item(seed, index), make_item(seed, index)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.question, a.answer, a.family, a.question_type, a.needs_high_res, a.uid) == (
            b.question, b.answer, b.family, b.question_type, b.needs_high_res, b.uid)


def test_different_seeds_and_indices_give_different_images():
    hashes = {image_hash(make_item(seed, index).image) for seed in (0, 1) for index in range(12)}
    assert len(hashes) == 24


def test_items_are_112_px_rgb():
    for index in range(6):
        item = make_item(0, index)
        assert item.image.size == (IMAGE_SIZE, IMAGE_SIZE) == (112, 112)
        assert item.image.mode == "RGB"


def test_families_cycle_and_only_fine_small_needs_high_res():
    for index in range(30):
        item = make_item(7, index)
        assert item.family == FAMILIES[index % 3]
        assert item.needs_high_res is (item.family == "fine_small")
        assert item.uid == f"s7-{index}"
    families = [make_item(7, i).family for i in range(6)]
    assert families == ["coarse", "fine_small", "fine_large"] * 2


def test_fine_small_and_fine_large_ask_the_same_question():
    small = [make_item(3, i) for i in range(1, 30, 3)]
    large = [make_item(3, i) for i in range(2, 30, 3)]
    assert {item.family for item in small} == {"fine_small"}
    assert {item.family for item in large} == {"fine_large"}
    wordings = {item.question for item in small + large}
    assert wordings == {QUESTIONS["pattern"]}
    assert {item.question_type for item in small + large} == {"pattern"}


def test_answers_are_in_the_documented_sets():
    seen_types = set()
    for index in range(90):
        item = make_item(11, index)
        assert item.question == QUESTIONS[item.question_type]
        assert item.answer in ANSWER_SETS[item.question_type], (item.question_type, item.answer)
        if item.family == "coarse":
            assert item.question_type in {"colour", "shape", "count"}
        seen_types.add(item.question_type)
    assert seen_types == set(QUESTIONS)


def test_split_items_do_not_share_images():
    hashes = {split: [image_hash(item.image) for item in split_items(split, 60)]
              for split in ("train", "validation", "test")}
    for split, values in hashes.items():
        assert len(values) == 60
        assert len(set(values)) == 60, f"{split} repeats an image"
    assert not set(hashes["train"]) & set(hashes["validation"])
    assert not set(hashes["train"]) & set(hashes["test"])
    assert not set(hashes["validation"]) & set(hashes["test"])


def test_split_items_are_deterministic_and_seeded():
    first = split_items("validation", 6)
    again = split_items("validation", 6)
    other_seed = split_items("validation", 6, seed=1)
    assert [image_hash(i.image) for i in first] == [image_hash(i.image) for i in again]
    assert not {image_hash(i.image) for i in first} & {image_hash(i.image) for i in other_seed}
    assert split_items("test", 4)[3].uid == split_items("test", 10)[3].uid


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        split_items("dev", 3)


# ---------------------------------------------------------------- scenes


def test_scene_answers_match_the_pixels():
    rng = np.random.default_rng(42)
    for _ in range(40):
        scene = make_scene(rng)
        pixels = np.asarray(scene.image).astype(int)
        assert 1 <= len(scene.shapes) <= 3
        assert answer_for(scene, "count") == str(len(scene.shapes))
        assert answer_for(scene, "pattern") == scene.pattern
        assert scene.largest.radius == max(s.radius for s in scene.shapes)
        for shape in scene.shapes:
            # the centre of a circle or triangle is painted; a ring's hole is not, its band is
            x = shape.cx + (0.75 * shape.radius if shape.kind == "ring" else 0)
            pixel = pixels[int(round(shape.cy)), int(round(x))]
            assert np.abs(pixel - np.array(COLOURS[shape.colour])).max() <= 20, shape
            # no shape reaches into the label
            assert not (shape.cx - shape.radius < LABEL_SIZE and shape.cy - shape.radius < LABEL_SIZE)


def test_scene_items_cover_every_question():
    scene = make_scene(np.random.default_rng(0), label_size="small")
    items = scene_items(scene, "u")
    assert [i.question_type for i in items] == ["colour", "shape", "count", "pattern"]
    assert [i.needs_high_res for i in items] == [False, False, False, True]
    assert items[3].family == "fine_small" and items[3].answer == scene.pattern
    large = scene_items(make_scene(np.random.default_rng(0), label_size="large"), "v")
    assert large[3].family == "fine_large" and large[3].needs_high_res is False


def test_label_size_is_forced_and_patterns_vary():
    rng = np.random.default_rng(1)
    scenes = [make_scene(rng, "small") for _ in range(40)]
    assert {s.label_size for s in scenes} == {"small"}
    assert {s.pattern for s in scenes} == set(PATTERNS)


# ---------------------------------------------------------------- legibility probe

PROBE_GRID = PixelGrid(28, 56 * 56, 112 * 112)
PROBE_TRAIN, PROBE_TEST = 3000, 800
LOW_CROP = LABEL_SIZE // 2  # the label is the top-left 28 px of the 112 px image: 14 px in the 56 px view


@functools.cache
def probe_data(label_size: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label crops of the low and high views of `n` scenes, and the pattern index of each."""
    rng = np.random.default_rng([seed, 0 if label_size == "small" else 1])
    low, high, labels = [], [], []
    for _ in range(n):
        scene = make_scene(rng, label_size)
        views = make_views(scene.image, PROBE_GRID)
        assert views.low.size == (56, 56) and views.high.size == (112, 112)
        low.append(np.asarray(views.low, dtype=np.float32)[:LOW_CROP, :LOW_CROP])
        high.append(np.asarray(views.high, dtype=np.float32)[:LABEL_SIZE, :LABEL_SIZE])
        labels.append(PATTERNS.index(scene.pattern))
    return np.stack(low), np.stack(high), np.array(labels)


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _probe_accuracy(kind: str, train_x, train_y, test_x, test_y, epochs: int) -> float:
    import torch
    from torch import nn

    torch.manual_seed(0)
    train_x, test_x = _standardised(train_x, test_x)
    side, channels = train_x.shape[1], train_x.shape[3]
    if kind == "mlp":
        inputs = side * side * channels
        model = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 128), nn.ReLU(), nn.Linear(128, 4))
    else:
        train_x, test_x = train_x.transpose(0, 3, 1, 2), test_x.transpose(0, 3, 1, 2)
        model = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * ((side + 1) // 2) ** 2, 4),
        )
    xs, ys = torch.tensor(np.ascontiguousarray(train_x)), torch.tensor(train_y)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 128):
            batch = order[start:start + 128]
            loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        predicted = model(torch.tensor(np.ascontiguousarray(test_x))).argmax(1).numpy()
    return float((predicted == test_y).mean())


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_small_label_is_illegible_at_low_res(one_thread):
    start = time.perf_counter()
    accuracy = {}
    for label_size in ("small", "large"):
        train_low, train_high, train_y = probe_data(label_size, PROBE_TRAIN, seed=1)
        test_low, test_high, test_y = probe_data(label_size, PROBE_TEST, seed=2)
        assert np.bincount(test_y, minlength=4).min() > PROBE_TEST // 8  # all four patterns present
        accuracy[label_size, "low", "mlp"] = _probe_accuracy("mlp", train_low, train_y, test_low, test_y, 40)
        accuracy[label_size, "low", "cnn"] = _probe_accuracy("cnn", train_low, train_y, test_low, test_y, 10)
        if label_size == "small":
            # the label must still be legible at full resolution, or the question is unanswerable
            accuracy["small", "high", "mlp"] = _probe_accuracy(
                "mlp", train_high, train_y, test_high, test_y, 25)
    seconds = time.perf_counter() - start
    for key, value in accuracy.items():
        print(f"probe accuracy {'/'.join(key)}: {value:.3f}")
    print(f"probe wall time: {seconds:.1f} s")

    small_low = max(accuracy["small", "low", "mlp"], accuracy["small", "low", "cnn"])
    assert small_low < 0.40, f"small labels are legible at low resolution (accuracy {small_low:.3f})"
    # positive controls: the same probes read large labels at low res, and small ones at full res
    assert accuracy["large", "low", "mlp"] > 0.90
    assert accuracy["large", "low", "cnn"] > 0.90
    assert accuracy["small", "high", "mlp"] > 0.90
