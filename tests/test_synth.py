"""Tests for `visionthink.data.synth`: determinism, families, splits, answers, and a legibility probe."""

from __future__ import annotations

import functools
import hashlib
import time

import numpy as np
import pytest
from conftest import TINY_GRID as PROBE_GRID  # tests/ is on sys.path
from conftest import words_of

from visionthink.data.synth import (
    COLOURS,
    FAMILIES,
    HELDOUT_TEMPLATES,
    IMAGE_SIZES,
    LABEL_SIDES,
    LADDER_FAMILIES,
    LADDER_MIX,
    LADDER_TRAIN_MIX,
    PATTERNS,
    QUESTION_TYPES,
    QUESTIONS,
    RIGHT_ACTION,
    SHAPES,
    SPREAD_LABELS,
    answer_for,
    is_held_out,
    ladder_items,
    make_item,
    make_ladder_item,
    make_scene,
    make_spread_scene,
    question_type_of,
    split_items,
    wordings,
)
from visionthink.images import Views, make_views, zoom_budget_cells, zoom_region

ANSWER_SETS = {
    "colour": set(COLOURS),
    "shape": set(SHAPES),
    "count": {"1", "2", "3"},
    "pattern": set(PATTERNS),
    "majority": set(PATTERNS),
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


def test_items_come_in_every_aspect_ratio_on_the_56_px_grid():
    sizes = set()
    for index in range(60):
        item = make_item(0, index)
        assert item.image.mode == "RGB"
        assert item.image.size in IMAGE_SIZES
        assert item.image.width % 56 == 0 and item.image.height % 56 == 0  # half of it is on the 28 px grid
        sizes.add(item.image.size)
    assert sizes == set(IMAGE_SIZES)


def test_families_cycle_and_only_fine_small_needs_high_res():
    for index in range(30):
        item = make_item(7, index)
        assert item.family == FAMILIES[index % 3]
        assert item.needs_high_res is (item.family == "fine_small")
        assert item.uid == f"s7-{index}"
    families = [make_item(7, i).family for i in range(6)]
    assert families == ["coarse", "fine_small", "fine_large"] * 2


def test_fine_small_and_fine_large_draw_from_the_same_wordings():
    small = [make_item(3, i) for i in range(1, 90, 3)]
    large = [make_item(3, i) for i in range(2, 90, 3)]
    assert {item.family for item in small} == {"fine_small"}
    assert {item.family for item in large} == {"fine_large"}
    assert {item.question_type for item in small + large} == {"pattern"}
    for items in (small, large):
        asked = {item.question for item in items}
        assert asked <= set(wordings("pattern", "train"))
        assert len(asked) > 20  # wordings vary, the family does not tell which


def test_answers_are_in_the_documented_sets():
    seen_types = set()
    for index in range(90):
        item = make_item(11, index)
        assert question_type_of(item.question) == item.question_type
        assert item.answer in ANSWER_SETS[item.question_type], (item.question_type, item.answer)
        if item.family == "coarse":
            assert item.question_type in {"colour", "shape", "count"}
        seen_types.add(item.question_type)
    assert seen_types | {"majority"} == set(QUESTIONS) == set(QUESTION_TYPES)  # majority: the ladder world


# ---------------------------------------------------------------- wordings


@pytest.mark.parametrize("question_type", QUESTION_TYPES)
def test_each_question_type_has_many_wordings_split_train_and_held_out(question_type):
    train, held = wordings(question_type, "train"), wordings(question_type, "heldout")
    assert len(train) >= 30 and len(held) >= 30
    assert not set(train) & set(held)
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.4
    # held out by words: no trained wording is a held-out one up to case and punctuation
    assert not {words_of(t) for t in train} & {words_of(h) for h in held}
    assert all(is_held_out(h) for h in held) and not any(is_held_out(t) for t in train)
    # the variation the issue asks for: case, punctuation, synonyms
    both = train + held
    assert any(w.isupper() for w in both) and any(w.islower() for w in both)
    assert any(not w.endswith(("?", ".")) for w in both)
    assert QUESTIONS[question_type] in train


def test_synonyms_appear_in_training_wordings():
    trained = " ".join(words_of(w) for q in QUESTION_TYPES for w in wordings(q, "train")).split()
    for word in ("colour", "color", "biggest", "largest", "sticker", "tag", "texture", "picture"):
        assert word in trained


def test_held_out_items_share_images_and_answers_with_train_items():
    train, held = split_items("test", 12), split_items("test", 12, wordings="heldout")
    for a, b in zip(train, held, strict=True):
        assert a.image.tobytes() == b.image.tobytes() and a.answer == b.answer and a.uid == b.uid
        assert a.wording == "train" and b.wording == "heldout"
        assert b.question in wordings(b.question_type, "heldout")
    with pytest.raises(ValueError, match="never for training"):
        split_items("train", 3, wordings="heldout")


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
            x1, y1, x2, y2 = scene.label_box
            nearest = (min(max(shape.cx, x1), x2), min(max(shape.cy, y1), y2))
            assert (shape.cx - nearest[0]) ** 2 + (shape.cy - nearest[1]) ** 2 >= shape.radius ** 2


def test_labels_vary_in_position_and_size_within_their_range():
    rng = np.random.default_rng(3)
    for label_size in ("small", "large"):
        boxes = [make_scene(rng, label_size).label_box for _ in range(40)]
        sides = {x2 - x1 for x1, _, x2, _ in boxes}
        assert all(x2 - x1 == y2 - y1 for x1, y1, x2, y2 in boxes)
        assert min(sides) >= LABEL_SIDES[label_size][0] and max(sides) <= LABEL_SIDES[label_size][1]
        assert len(sides) >= 5
        assert len({(x1 // 28, y1 // 28) for x1, y1, _, _ in boxes}) > 6  # not pinned to a corner


def test_label_size_is_forced_and_patterns_vary():
    rng = np.random.default_rng(1)
    scenes = [make_scene(rng, "small") for _ in range(40)]
    assert {s.label_size for s in scenes} == {"small"}
    assert {s.pattern for s in scenes} == set(PATTERNS)


# ---------------------------------------------------------------- legibility probe

PROBE_TRAIN, PROBE_TEST = 3000, 800


def _centred_crop(pixels: np.ndarray, box: tuple[int, int, int, int], scale: float, side: int) -> np.ndarray:
    cx, cy = int((box[0] + box[2]) * scale / 2), int((box[1] + box[3]) * scale / 2)
    x, y = cx - side // 2, cy - side // 2
    return pixels[y : y + side, x : x + side]


@functools.cache
def probe_data(label_size: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of the label (the smallest label's side, centred on it; wherever it sits, whatever the
    image's aspect ratio) from the low and high views of `n` scenes, and the pattern index of each."""
    rng = np.random.default_rng([seed, 0 if label_size == "small" else 1])
    side = LABEL_SIDES[label_size][0]
    low, high, labels = [], [], []
    for _ in range(n):
        scene = make_scene(rng, label_size)
        views = make_views(scene.image, PROBE_GRID)
        assert views.high.size == scene.image.size
        assert views.low.size == (scene.image.width // 2, scene.image.height // 2)
        low.append(_centred_crop(np.asarray(views.low, dtype=np.float32), scene.label_box, 0.5, side // 2))
        high.append(_centred_crop(np.asarray(views.high, dtype=np.float32), scene.label_box, 1.0, side))
        labels.append(PATTERNS.index(scene.pattern))
    return np.stack(low), np.stack(high), np.array(labels)


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _probe_accuracy(kind: str, train_x, train_y, test_x, test_y, epochs: int) -> float:
    return float((_probe_predictions(kind, train_x, train_y, test_x, epochs) == test_y).mean())


def _probe_predictions(kind: str, train_x, train_y, test_x, epochs: int) -> np.ndarray:
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
        return model(torch.tensor(np.ascontiguousarray(test_x))).argmax(1).numpy()


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
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


# ---------------------------------------------------------------- the ladder world (issue 27)


def test_ladder_items_follow_the_mix_and_know_their_right_action():
    items = ladder_items("test", 48)
    assert [item.family for item in items] == [LADDER_MIX[i % len(LADDER_MIX)] for i in range(48)]
    assert {f: LADDER_MIX.count(f) for f in LADDER_FAMILIES} == {"coarse": 5, "fine_small": 2, "fine_large": 4,
                                                                 "fine_spread": 1}
    assert RIGHT_ACTION == {"coarse": "answer", "fine_large": "answer", "fine_small": "zoom", "fine_spread": "resize"}
    for item in items:
        assert item.right_action == RIGHT_ACTION[item.family]
        assert item.needs_high_res == (item.right_action != "answer")
        assert item.answer in ANSWER_SETS[item.question_type]
        assert (item.label_box is not None) == (item.family == "fine_small")  # the box a zoom oracle aims at
        assert item.uid.startswith("l6-") and question_type_of(item.question) == item.question_type
    train = ladder_items("train", 8)
    assert [item.family for item in train] == list(LADDER_TRAIN_MIX) * 2  # training sees each family equally
    assert not {image_hash(i.image) for i in train} & {image_hash(i.image) for i in items}
    again = make_ladder_item(6, 5)
    assert image_hash(again.image) == image_hash(items[5].image) and again.question == items[5].question
    with pytest.raises(ValueError, match="never for training"):
        ladder_items("train", 4, wordings="heldout-templates")
    with pytest.raises(ValueError, match="never for training"):
        split_items("train", 4, wordings="heldout-templates")


def _cells(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return box[0] // 28, box[1] // 28


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_spread_labels_need_a_resize_no_zoom_covers_them(size):
    rng = np.random.default_rng([7, size[0]])
    for _ in range(20):
        scene = make_spread_scene(rng, size)
        assert len(scene.labels) == SPREAD_LABELS and scene.label_size == "small"
        patterns = [pattern for pattern, _ in scene.labels]
        assert patterns.count(scene.pattern) == 2 and len(set(patterns)) == 2  # a majority of two
        assert answer_for(scene, "majority") == scene.pattern
        cells = [_cells(box) for _, box in scene.labels]
        assert len(set(cells)) == SPREAD_LABELS
        for _, (x1, y1, x2, y2) in scene.labels:
            assert x1 % 28 == 0 and y1 % 28 == 0 and 22 <= x2 - x1 == y2 - y1 <= 28
        columns, rows = size[0] // 28, size[1] // 28
        budget = zoom_budget_cells(columns, rows)
        for wide in range(1, columns + 1):  # every block of cells a zoom may return misses a label
            for tall in range(1, rows + 1):
                if wide * tall > budget:
                    continue
                for left in range(columns - wide + 1):
                    for top in range(rows - tall + 1):
                        assert not all(left <= c < left + wide and top <= r < top + tall for c, r in cells)
        views = make_views(scene.image, PROBE_GRID)  # the widest zoom: a box around all the labels
        xs = [v for _, box in scene.labels for v in (box[0], box[2])]
        ys = [v for _, box in scene.labels for v in (box[1], box[3])]
        region = zoom_region((min(xs) / 2, min(ys) / 2, max(xs) / 2, max(ys) / 2), Views(views.low, views.high),
                             PROBE_GRID)
        inside = [region[0] <= box[0] and box[2] <= region[2] and region[1] <= box[1] and box[3] <= region[3]
                  for _, box in scene.labels]
        assert not all(inside)


def test_held_out_templates_are_new_sentence_structures():
    openings = ("describe", "i would like to know", "looking at")
    for question_type in QUESTION_TYPES:
        held = wordings(question_type, "heldout-templates")
        assert len(held) >= 30
        trained = wordings(question_type, "train") + wordings(question_type, "heldout")
        assert not set(held) & set(trained)
        assert all(h.lower().startswith(openings) for h in held)
        assert not any(t.lower().startswith(("i would like", "looking at")) for t in trained)
        assert not any("in one word" in t.lower() for t in trained)
        assert all(question_type_of(h) == question_type for h in held)
        assert len(HELDOUT_TEMPLATES[question_type]) == 3
    for family_items in (split_items("test", 6, wordings="heldout-templates"),
                         ladder_items("test", 12, wordings="heldout-templates")):
        plain = {item.uid: item for item in (split_items("test", 6) if family_items[0].uid.startswith("s")
                                             else ladder_items("test", 12))}
        for item in family_items:  # the same images and answers, another sentence structure
            assert image_hash(item.image) == image_hash(plain[item.uid].image)
            assert item.answer == plain[item.uid].answer and item.question != plain[item.uid].question


def test_training_frames_share_no_word_with_the_held_out_structures_frames():
    from visionthink.data.synth import TRAIN_FRAMES, frame_wording

    frame_words = {"describe", "word", "would", "like", "know", "looking", "see"}
    for frame in TRAIN_FRAMES:
        words = set("".join(c if c.isalpha() else " " for c in frame.replace("{question}", "")).lower().split())
        assert not words & frame_words, frame
    rng = np.random.default_rng(0)
    framed = {frame_wording(rng, "What colour is the largest shape?") for _ in range(200)}
    assert len(framed) == len(TRAIN_FRAMES) and all("What colour is the largest shape?" in f for f in framed)


def test_carrier_forms_keep_held_out_structures_unseen_and_ask_their_own_question():
    from visionthink.data.synth import CARRIER_TEMPLATES, CLAUSE_CARRIERS, carrier_wordings, pick_carrier

    frame_words = {"describe", "word", "would", "like", "know", "looking", "see"}
    for carrier in CARRIER_TEMPLATES + CLAUSE_CARRIERS:
        words = set("".join(c if c.isalpha() else " " for c in carrier.replace("{phrase}", "")).lower().split())
        assert not words & frame_words, carrier
    held = {words_of(t) for q in QUESTION_TYPES for ws in ("heldout", "heldout-templates") for t in wordings(q, ws)}
    for question_type in QUESTION_TYPES:
        carried = carrier_wordings(question_type)
        assert len(carried) > 1000
        assert not {words_of(t) for t in carried} & held
        assert not {words_of(t) for t in carried} & {words_of(t) for t in wordings(question_type)}  # new forms
        assert not any(t.lower().startswith(("describe", "i ", "looking")) or "one word" in t.lower() for t in carried)
        assert {question_type_of(t) for t in carried} == {question_type}
    assert "Give the number of shapes." in carrier_wordings("count")
    assert "Can you say how many figures there are?" in carrier_wordings("count")
    assert "Name the pattern on most labels." not in carrier_wordings("majority")  # a paired wording, not a carrier
    rng = np.random.default_rng(0)
    assert len({pick_carrier(rng, "colour") for _ in range(50)}) > 40


def test_do_questions_ask_about_one_object_and_keep_held_out_structures_unseen():
    from visionthink.data.synth import DO_QUESTIONS, DO_SHARE, do_wordings, pick_carrier

    frame_words = {"describe", "word", "would", "like", "know", "looking", "see"}
    held = {words_of(t) for q in QUESTION_TYPES for ws in ("heldout", "heldout-templates") for t in wordings(q, ws)}
    for question_type, forms in DO_QUESTIONS.items():
        for form in forms:
            words = set(words_of(form.replace("{", "").replace("}", "")).split())
            assert "do" in words and not words & frame_words and "," not in form, form
        asked = do_wordings(question_type)
        assert asked and not {words_of(t) for t in asked} & held
        assert {question_type_of(t) for t in asked} == {question_type}
    assert not do_wordings("majority")  # its trained templates already say "do"
    assert "Which pattern do you find on the label?" in do_wordings("pattern")
    rng = np.random.default_rng(2)
    drawn = [pick_carrier(rng, "pattern") for _ in range(2000)]
    share = sum(t in set(do_wordings("pattern")) for t in drawn) / len(drawn)
    assert abs(share - DO_SHARE) < 0.04


def test_nonsense_words_keep_the_question_and_its_case():
    from visionthink.data.synth import NOISE_LETTERS, noise_wording

    every_word = {w for q in QUESTION_TYPES for ws in ("train", "heldout", "heldout-templates")
                  for t in wordings(q, ws) for w in words_of(t).split()}
    assert not any(set(w) <= set(NOISE_LETTERS) for w in every_word)  # a nonsense word is never a real one
    rng = np.random.default_rng(1)
    for question in ("What colour is the largest shape?", "HOW MANY SHAPES ARE THERE", "count the figures."):
        noised = {noise_wording(rng, question) for _ in range(40)}
        assert len(noised) > 30
        for text in noised:
            added = [w for w in words_of(text).split() if w not in words_of(question).split()]
            assert 1 <= len(added) <= 2 and all(set(w) <= set(NOISE_LETTERS) for w in added), text
            assert words_of(question) in words_of(text) and text.isupper() == question.isupper()
    plain = np.random.default_rng(3)
    assert noise_wording(plain, "Q?", 0.0) == "Q?" and plain.random() == np.random.default_rng(3).random()


@functools.cache
def spread_probe_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crops of each of a spread scene's labels from the low and high views (3 per scene, in order), each label's
    pattern, and each scene's majority."""
    rng = np.random.default_rng([seed, 27])
    side = LABEL_SIDES["small"][0]
    low, high, patterns, majority = [], [], [], []
    for _ in range(n):
        scene = make_spread_scene(rng)
        views = make_views(scene.image, PROBE_GRID)
        low_px, high_px = np.asarray(views.low, dtype=np.float32), np.asarray(views.high, dtype=np.float32)
        for pattern, box in scene.labels:
            low.append(_centred_crop(low_px, box, 0.5, side // 2))
            high.append(_centred_crop(high_px, box, 1.0, side))
            patterns.append(PATTERNS.index(pattern))
        majority.append(PATTERNS.index(scene.pattern))
    return np.stack(low), np.stack(high), np.array(patterns), np.array(majority)


def _majority(predicted: np.ndarray) -> np.ndarray:
    """Each scene's most read pattern from its labels' predictions (3 per scene; a three-way tie: the first)."""
    votes = predicted.reshape(-1, SPREAD_LABELS)
    return np.array([np.bincount(row, minlength=4).argmax() if len(set(row)) < 3 else row[0] for row in votes])


@pytest.mark.slow
def test_spread_majority_is_at_chance_at_low_res_and_legible_at_full_res(one_thread):
    """Each label read by a probe, then the majority of the three readings."""
    train_low, train_high, train_y, _ = spread_probe_data(PROBE_TRAIN // 3, seed=1)
    test_low, test_high, _, test_majority = spread_probe_data(PROBE_TEST // 3, seed=2)
    low = max((_majority(_probe_predictions(kind, train_low, train_y, test_low, epochs)) == test_majority).mean()
              for kind, epochs in (("mlp", 40), ("cnn", 10)))
    high = (_majority(_probe_predictions("mlp", train_high, train_y, test_high, 25)) == test_majority).mean()
    print(f"spread probe (majority of three readings): low {low:.3f}, high {high:.3f}")
    assert low < 0.40, f"the majority is legible at low resolution ({low:.3f})"
    assert high > 0.90, f"the majority is not legible at full resolution ({high:.3f})"
