"""The synthetic world (v2): images whose questions know whether low resolution is enough.

Every image holds 1-3 large shapes and one label (a square patch with a pattern) of a random size
in one random visual-token cell (aligned to the 28 px grid, so each label sits inside one token at
full resolution, as a from-scratch vision tower can learn to read it). Images come in three aspect
ratios (`IMAGE_SIZES`), each a multiple of 56 px so that the half-size low view is exactly on the
28 px grid.

- `coarse`: colour, shape or count of the large shapes. Answerable at low resolution.
- `fine_small`: the label's pattern drawn in 1 px lines/dots, softened and grained so that halving
  the image washes it out. Needs full resolution.
- `fine_large`: the same question, the pattern drawn in 4 px bars. Legible at low resolution.

Every question type is asked in many wordings (`wordings`): templates crossed with synonyms, case
and punctuation. A fixed rule (`is_held_out`) keeps about a quarter of them out of training, so a
model can be measured on wordings it never saw; whole sentence structures (`HELDOUT_TEMPLATES`) are
held out too. `needs_high_res` is true exactly for small labels.

The ladder world (`ladder_items`, issue 27) adds a fourth family whose detail is spread out:
- `fine_spread`: three small labels in token cells far apart; "which pattern do most labels show?".
  No zoom within its budget (`images.ZOOM_MAX_FRACTION`) covers all three, so only a resize is enough.
Each family has one cheapest action that is enough (`RIGHT_ACTION`): coarse and large labels are
answered at low resolution, a small label is zoomed, spread labels need the whole image.
The label's mean brightness does not depend on the pattern, so the low-res view carries (almost)
no trace of a small pattern; `tests/test_synth.py` checks this with a probe.
Generation is deterministic in (seed, index).
"""

from __future__ import annotations

import functools
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from visionthink.images import zoom_budget_cells

IMAGE_SIZES = ((112, 112), (168, 112), (112, 168))
"""(width, height) of the generated images: full resolution, 16 or 24 visual tokens."""
LABEL_SIDES = {"small": (22, 28), "large": (24, 28)}
"""Label side range in px, per label size: inside each family's legibility range and one 28 px token cell.
(Labels at any pixel position and up to 40 px were tried first: in 1000 SFT steps the tiny model's vision
tower did not learn to read their patterns at all; docs/world-v2.md.)"""
LABEL_CELL = 28
"""Labels start at a multiple of this (the full-resolution token grid)."""
FAMILIES = ("coarse", "fine_small", "fine_large")
LADDER_FAMILIES = (*FAMILIES, "fine_spread")
RIGHT_ACTION = {"coarse": "answer", "fine_large": "answer", "fine_small": "zoom", "fine_spread": "resize"}
"""The cheapest action that shows the answer, per family: true by construction of the scenes."""
SPREAD_LABELS = 3
"""Labels in a `fine_spread` scene: two show the answer's pattern, one another."""

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "ring", "triangle")
PATTERNS = ("horizontal", "vertical", "checker", "dots")
QUESTION_TYPES = ("colour", "shape", "count", "pattern", "majority")
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
"""Held-out splits: each split draws from its own seed stream, so no image repeats across splits."""
WordingSet = Literal["train", "heldout", "heldout-templates"]
WORDING_SETS = ("train", "heldout", "heldout-templates")
"""`train`: trained templates, trained words; `heldout`: trained templates, held-out words (`is_held_out`);
`heldout-templates`: every wording of the held-out sentence structures (`HELDOUT_TEMPLATES`)."""

# ---------------------------------------------------------------- wordings

_TEMPLATES = {
    "colour": [
        "What {colour} is the {largest} {shape}?",
        "Which {colour} is the {largest} {shape}?",
        "What is the {colour} of the {largest} {shape}?",
        "Tell me the {colour} of the {largest} {shape}.",
        "Name the {colour} of the {largest} {shape}.",
        "{colour} of the {largest} {shape}?",
        "What {colour} does the {largest} {shape} have?",
        "Please say what {colour} the {largest} {shape} is.",
        "The {largest} {shape}: what {colour} is it?",
        "Could you tell me the {colour} of the {largest} {shape}, please?",
        "{largest} {shape} {colour}?",
    ],
    "shape": [
        "What kind of shape is the {largest} {shape}?",
        "What type of shape is the {largest} {shape}?",
        "Which kind of shape is the {largest} {shape}?",
        "Is the {largest} {shape} a circle, a ring or a triangle?",
        "Name the kind of the {largest} {shape}.",
        "What form does the {largest} {shape} have?",
        "Tell me what kind of shape the {largest} {shape} is.",
        "{largest} {shape}: which kind?",
        "Could you say what kind of shape the {largest} {shape} is, please?",
        "Kind of the {largest} {shape}?",
        "What sort of shape is the {largest} {shape}?",
    ],
    "count": [
        "How many {shapes} are there?",
        "How many {shapes} are in the {image}?",
        "How many {shapes} can you see?",
        "Count the {shapes}.",
        "Count the {shapes} in the {image}.",
        "What is the number of {shapes}?",
        "What is the number of {shapes} in the {image}?",
        "Number of {shapes}?",
        "Tell me how many {shapes} there are.",
        "How many {shapes} does the {image} contain?",
        "Please count the {shapes} in the {image}.",
        "{shapes} in the {image}: how many?",
    ],
    "pattern": [
        "What {pattern} is on the {label}?",
        "Which {pattern} is on the {label}?",
        "What {pattern} does the {label} show?",
        "What is the {pattern} on the {label}?",
        "Which {pattern} does the {label} have?",
        "{label} {pattern}?",
        "Describe the {pattern} on the {label}.",
        "Tell me the {pattern} of the {label}.",
        "What {pattern} is printed on the {label}?",
        "Could you tell me which {pattern} the {label} shows, please?",
        "The {label}: what {pattern} is on it?",
        "Name the {pattern} on the {label}.",
    ],
    "majority": [
        "Which {pattern} appears on most {labels}?",
        "Which {pattern} do most {labels} show?",
        "What {pattern} is on most of the {labels}?",
        "What is the most common {pattern} among the {labels}?",
        "Most {labels} show which {pattern}?",
        "Tell me the {pattern} that most {labels} have.",
        "Name the {pattern} shared by most {labels}.",
        "Which {pattern} do two of the {labels} share?",
        "{labels}: which {pattern} is most common?",
        "Could you tell me which {pattern} most {labels} show, please?",
        "What {pattern} do most {labels} have?",
    ],
}
HELDOUT_TEMPLATES = {
    "colour": [
        "Describe the {colour} of the {largest} {shape} in one word.",
        "I would like to know the {colour} of the {largest} {shape}.",
        "Looking at the {largest} {shape}, what {colour} do you see?",
    ],
    "shape": [
        "Describe the kind of the {largest} {shape} in one word.",
        "I would like to know what kind of shape the {largest} {shape} is.",
        "Looking at the {largest} {shape}, which kind is it?",
    ],
    "count": [
        "Describe the number of {shapes} in one word.",
        "I would like to know how many {shapes} the {image} has.",
        "Looking at the {image}, how many {shapes} do you see?",
    ],
    "pattern": [
        "Describe the {pattern} on the {label} in one word.",
        "I would like to know the {pattern} on the {label}.",
        "Looking at the {label}, which {pattern} do you see?",
    ],
    "majority": [
        "Describe in one word the {pattern} most {labels} show.",
        "I would like to know which {pattern} most {labels} have.",
        "Looking at the {labels}, which {pattern} do most of them show?",
    ],
}
"""Sentence structures held out whole (the fixed rule: these three forms, "Describe ... in one word", "I would like
to know ..." and "Looking at ..., ...?", appear in no trained template). No training sees any of their wordings."""
TRAIN_FRAMES = (
    "Quick question: {question}",
    "Question: {question}",
    "Hey, {question}",
    "Now, {question}",
    "One more: {question}",
    "Here is my question. {question}",
    "Can you help? {question}",
    "Please answer this. {question}",
    "{question} Thanks!",
    "{question} Keep it short.",
    "{question} Answer briefly.",
    "{question} Please be brief.",
)
"""Frames around a trained wording that leave its question as it was (training only, `frame_wording`): a model
trained on them learns that words around the question do not change what it asks. None uses a word of the held-out
structures' frames ("describe", "word", "would", "like", "know", "looking", "see"; `tests/test_synth.py`)."""
_SLOTS = {
    "colour": ["colour", "color"],
    "largest": ["largest", "biggest"],
    "shape": ["shape", "object", "figure"],
    "shapes": ["shapes", "objects", "figures"],
    "image": ["image", "picture"],
    "pattern": ["pattern", "texture", "design"],
    "label": ["label", "tag", "sticker"],
    "labels": ["labels", "tags", "stickers"],
}
_CASES = ("as written", "lower", "upper")


def _fill(template: str) -> list[str]:
    names = [name for name in _SLOTS if "{" + name + "}" in template]
    filled = []
    for values in itertools.product(*(_SLOTS[name] for name in names)):
        text = template.format(**dict(zip(names, values, strict=True)))
        filled.append(text[0].upper() + text[1:])
    return filled


def _styled(base: str) -> list[str]:
    """Case and punctuation variants of one wording."""
    out = []
    for case in _CASES:
        text = base.lower() if case == "lower" else base.upper() if case == "upper" else base
        out += [text, text.rstrip("?.")]
    return list(dict.fromkeys(out))


def is_held_out(base: str) -> bool:
    """The fixed split rule: a quarter of the base wordings (by a CRC of their lower-cased words) are held
    out, with every case and punctuation variant, so no trained wording differs from a held-out one only
    in case or punctuation. (The salt keeps the four canonical `QUESTIONS` in training.)"""
    return zlib.crc32(f"world v2:{_words(base)}".encode()) % 4 == 0


@functools.cache
def wordings(question_type: str, wording_set: WordingSet = "train") -> tuple[str, ...]:
    """Every wording of `question_type` in one wording set, in a fixed order."""
    if wording_set not in WORDING_SETS:
        raise ValueError(f"unknown wording set {wording_set!r}; expected one of {WORDING_SETS}")
    if wording_set == "heldout-templates":
        bases = [base for template in HELDOUT_TEMPLATES[question_type] for base in _fill(template)]
        return tuple(text for base in bases for text in _styled(base))
    held = wording_set == "heldout"
    bases = [base for template in _TEMPLATES[question_type] for base in _fill(template)]
    return tuple(text for base in bases if is_held_out(base) == held for text in _styled(base))


@functools.cache
def _question_types() -> dict[str, str]:
    known = {text: qtype for qtype in QUESTION_TYPES for ws in WORDING_SETS for text in wordings(qtype, ws)}
    known |= {text: qtype for qtype in QUESTION_TYPES for text in carrier_wordings(qtype) + do_wordings(qtype)}
    return known | {text: qtype for qtype in PAIRED_TEMPLATES for text in paired_wordings(qtype)}


def question_type_of(question: str) -> str | None:
    """The question type a wording of this world asks, or None for any other text."""
    return _question_types().get(question)


QUESTIONS = {qtype: _TEMPLATES[qtype][0].format(**{k: v[0] for k, v in _SLOTS.items()}) for qtype in QUESTION_TYPES}
"""The canonical (first) wording of each question type, e.g. "What pattern is on the label?" (a train wording)."""

# ---------------------------------------------------------------- scenes


@dataclass
class Shape:
    kind: str
    colour: str
    cx: float
    cy: float
    radius: float


@dataclass
class Scene:
    """Everything the generator knows about one image (the privileged labels)."""

    shapes: list[Shape]
    pattern: str
    label_size: str  # "small" or "large"
    label_box: tuple[int, int, int, int]
    """(x1, y1, x2, y2) of the label in image pixels, x2/y2 exclusive (a spread scene: its first label)."""
    image: Image.Image = field(repr=False)
    labels: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    """(pattern, box) of every label; empty means the one label (`pattern`, `label_box`)."""

    @property
    def all_labels(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        return self.labels or [(self.pattern, self.label_box)]

    @property
    def largest(self) -> Shape:
        return max(self.shapes, key=lambda s: s.radius)


@dataclass
class Item:
    """One question about one image."""

    image: Image.Image
    question: str
    answer: str
    family: str
    question_type: str
    needs_high_res: bool
    uid: str
    wording: str = "train"
    """Which wording set the question comes from: "train" or "heldout" (never trained on)."""
    label_box: tuple[int, int, int, int] | None = None
    shapes: tuple[Shape, ...] = ()
    """The scene's shapes (privileged labels, for training-time checks)."""

    @property
    def right_action(self) -> str:
        """The cheapest action that shows the answer: "answer", "zoom" or "resize" (`RIGHT_ACTION`)."""
        return RIGHT_ACTION[self.family]


def pattern_array(pattern: str, size: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """A `side` px square of pattern values in {0, 1}, with a random phase."""
    period = 2 if size == "small" else 8
    bar = 1 if size == "small" else 4
    y, x = np.mgrid[0:side, 0:side]
    y = y + int(rng.integers(period))
    x = x + int(rng.integers(period))
    rows = (y % period) < bar
    cols = (x % period) < bar
    if pattern == "horizontal":
        return rows.astype(np.float64)
    if pattern == "vertical":
        return cols.astype(np.float64)
    if pattern == "checker":
        return (rows ^ cols).astype(np.float64)
    if size == "small":
        return (rows & cols).astype(np.float64)
    dot_period = 8
    dy, dx = (y % dot_period) - 3.5, (x % dot_period) - 3.5
    return ((dy * dy + dx * dx) <= 5.0).astype(np.float64)


@functools.cache
def small_window(side: int) -> np.ndarray:
    """Fades a small pattern out towards the label's edges. A 1 px pattern that stops abruptly leaks
    through the low-res view's LANCZOS filter along the edges (a different trace for each pattern);
    faded out, it cancels everywhere."""
    hann = np.sin(np.pi * (np.arange(side) + 0.5) / side) ** 2
    return np.outer(hann, hann)


def render_label(pattern: str, size: str, rng: np.random.Generator, side: int = 28) -> np.ndarray:
    """The label as an RGB uint8 array: a zero-mean pattern on a random grey, soft edges and grain."""
    values = pattern_array(pattern, size, rng, side)
    values = values - values.mean()
    if size == "small":
        values = values * small_window(side)
    base = rng.uniform(90, 170)
    amplitude = rng.uniform(70, 120)
    grey = base + amplitude * values
    if size == "small":
        softened = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.45))
        grey = np.asarray(softened, dtype=np.float64)
        grey = grey + rng.normal(0, 14, grey.shape)
    else:
        grey = grey + rng.normal(0, 6, grey.shape)
    tint = rng.uniform(-12, 12, size=3)
    rgb = grey[..., None] + tint[None, None, :]
    return rgb.clip(0, 255).astype(np.uint8)


def _overlaps_box(cx: float, cy: float, radius: float, box: tuple[int, int, int, int], margin: float) -> bool:
    x1, y1, x2, y2 = box
    nearest_x, nearest_y = min(max(cx, x1), x2), min(max(cy, y1), y2)
    return (cx - nearest_x) ** 2 + (cy - nearest_y) ** 2 < (radius + margin) ** 2


def _place_shapes(rng: np.random.Generator, count: int, width: int, height: int,
                  boxes: list[tuple[int, int, int, int]]) -> list[Shape] | None:
    for _attempt in range(100):
        radii = sorted(rng.uniform(11, 17, size=count), reverse=True)
        radii[0] = rng.uniform(21, 26) if count > 1 else rng.uniform(14, 26)
        shapes: list[Shape] = []
        for radius in radii:
            for _try in range(60):
                cx = rng.uniform(radius + 2, width - radius - 2)
                cy = rng.uniform(radius + 2, height - radius - 2)
                if any(_overlaps_box(cx, cy, radius, box, 3) for box in boxes):
                    continue
                if all((cx - s.cx) ** 2 + (cy - s.cy) ** 2 > (radius + s.radius + 3) ** 2 for s in shapes):
                    shapes.append(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), cx, cy, radius))
                    break
        if len(shapes) == count:
            return shapes
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, background: tuple[int, int, int]) -> None:
    colour = COLOURS[shape.colour]
    x, y, r = shape.cx, shape.cy, shape.radius
    if shape.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape.kind == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        hole = r * 0.5
        draw.ellipse((x - hole, y - hole, x + hole, y + hole), fill=background)
    else:
        points = [(x + r * np.cos(a), y + r * np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
        draw.polygon(points, fill=colour)


def make_scene(rng: np.random.Generator, label_size: str | None = None,
               size: tuple[int, int] | None = None) -> Scene:
    """Draw one random scene; `label_size` forces "small" or "large", `size` the (width, height)."""
    label_size = label_size or str(rng.choice(["small", "large"]))
    width, height = size or IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    count = int(rng.integers(1, 4))
    for _attempt in range(200):
        side = int(rng.integers(LABEL_SIDES[label_size][0], LABEL_SIDES[label_size][1] + 1))
        x = LABEL_CELL * int(rng.integers(width // LABEL_CELL))
        y = LABEL_CELL * int(rng.integers(height // LABEL_CELL))
        box = (x, y, x + side, y + side)
        shapes = _place_shapes(rng, count, width, height, [box])
        if shapes:
            break
    else:  # pragma: no cover - a free spot is always found
        raise RuntimeError("could not place the label and shapes")
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        _draw_shape(draw, shape, background)
    pattern = str(rng.choice(PATTERNS))
    canvas.paste(Image.fromarray(render_label(pattern, label_size, rng, side)), (x, y))
    noise = rng.normal(0, 3, (height, width, 3))
    pixels = (np.asarray(canvas, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)
    return Scene(shapes=shapes, pattern=pattern, label_size=label_size, label_box=box,
                 image=Image.fromarray(pixels))


def make_spread_scene(rng: np.random.Generator, size: tuple[int, int] | None = None) -> Scene:
    """A scene with `SPREAD_LABELS` small labels in token cells whose bounding block holds more cells than a zoom
    may (`zoom_budget_cells`): two labels share the answer's pattern, one shows another. Shapes as `make_scene`'s."""
    width, height = size or IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    count = int(rng.integers(1, 4))
    columns, rows = width // LABEL_CELL, height // LABEL_CELL
    budget = zoom_budget_cells(columns, rows)  # the tools' zoom budget
    for _attempt in range(500):
        cells = rng.choice(columns * rows, size=SPREAD_LABELS, replace=False)
        xs, ys = cells % columns, cells // columns
        if (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) <= budget:
            continue
        sides = rng.integers(LABEL_SIDES["small"][0], LABEL_SIDES["small"][1] + 1, size=SPREAD_LABELS)
        boxes = [(int(x) * LABEL_CELL, int(y) * LABEL_CELL, int(x) * LABEL_CELL + int(side),
                  int(y) * LABEL_CELL + int(side)) for x, y, side in zip(xs, ys, sides, strict=True)]
        shapes = _place_shapes(rng, count, width, height, boxes)
        if shapes:
            break
    else:  # pragma: no cover - a free spot is always found
        raise RuntimeError("could not place the labels and shapes")
    majority, minority = (str(p) for p in rng.choice(PATTERNS, size=2, replace=False))
    patterns = [majority] * (SPREAD_LABELS - 1) + [minority]
    rng.shuffle(patterns)
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        _draw_shape(draw, shape, background)
    for pattern, box in zip(patterns, boxes, strict=True):
        side = box[2] - box[0]
        canvas.paste(Image.fromarray(render_label(pattern, "small", rng, side)), box[:2])
    noise = rng.normal(0, 3, (height, width, 3))
    pixels = (np.asarray(canvas, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)
    return Scene(shapes=shapes, pattern=majority, label_size="small", label_box=boxes[0],
                 image=Image.fromarray(pixels), labels=list(zip(patterns, boxes, strict=True)))


def answer_for(scene: Scene, question_type: str) -> str:
    if question_type == "colour":
        return scene.largest.colour
    if question_type == "shape":
        return scene.largest.kind
    if question_type == "count":
        return str(len(scene.shapes))
    return scene.pattern


def family_of(scene: Scene, question_type: str) -> str:
    if question_type == "majority":
        return "fine_spread"
    return "coarse" if question_type != "pattern" else f"fine_{scene.label_size}"


def pick_wording(rng: np.random.Generator, question_type: str, wording_set: WordingSet = "train") -> str:
    options = wordings(question_type, wording_set)
    return options[int(rng.integers(len(options)))]


CROSSED_WORDINGS = {"pattern": "majority", "majority": "pattern"}
"""Training only (`crossed_wording_fraction`): a one-label scene asked "which pattern do most labels show?", three
labels asked "what pattern is on the label?". The think, the answer and the right action follow the scene, so the
action can only follow the image (one label or three), not the words."""


def wording_type(rng: np.random.Generator, question_type: str, crossed_fraction: float = 0.0) -> str:
    """The question type whose wordings ask `question_type`: the crossed one (`CROSSED_WORDINGS`) with probability
    `crossed_fraction`, else itself. Draws from `rng` only for a label question with `crossed_fraction` > 0."""
    if question_type not in CROSSED_WORDINGS or crossed_fraction <= 0:
        return question_type
    return CROSSED_WORDINGS[question_type] if rng.random() < crossed_fraction else question_type


PAIRED_TEMPLATES = {
    "pattern": [
        "Which {pattern} appears on the {label}?",
        "Which {pattern} does the {label} show?",
        "The {label} shows which {pattern}?",
        "Tell me the {pattern} that the {label} has.",
        "Name the {pattern} the {label} has.",
        "{label}: which {pattern} is on it?",
        "Could you tell me which {pattern} the {label} has, please?",
        "What {pattern} does the {label} have?",
        "Which {pattern} do you find on the {label}?",
        "What {pattern} do you read on the {label}?",
    ],
    "majority": [
        "What {pattern} is on most {labels}?",
        "Which {pattern} is on most {labels}?",
        "What is the {pattern} on most {labels}?",
        "Which {pattern} do most {labels} have?",
        "Most {labels} {pattern}?",
        "Tell me the {pattern} of most {labels}.",
        "What {pattern} is printed on most {labels}?",
        "Most {labels}: what {pattern} is on them?",
        "Name the {pattern} on most {labels}.",
        "Which {pattern} do you find on most {labels}?",
        "What {pattern} do you read on most {labels}?",
    ],
}
"""Training only (`paired_wording_fraction`): each label family asked in the other's sentence forms, with its own
number ("which pattern does the label show?" beside "which pattern do most labels show?"). A sentence form then tells
one label from three nowhere; only "the label" against "most labels" does. Small labels asked in held-out sentence
structures ("Looking at the label, which pattern do you see?") were resized: the form, not the number, had decided."""


@functools.cache
def paired_wordings(question_type: str) -> tuple[str, ...]:
    """Every wording of `PAIRED_TEMPLATES[question_type]` (empty for other types), less any that some held-out set
    or another question type's trained wordings already hold, so held-out wordings stay unseen."""
    taken = _taken_words(question_type)
    bases = [base for template in PAIRED_TEMPLATES.get(question_type, []) for base in _fill(template)]
    return tuple(dict.fromkeys(text for base in bases if _words(base) not in taken for text in _styled(base)))


CARRIER_TEMPLATES = (
    "Give {phrase}.",
    "Give me {phrase}.",
    "State {phrase}.",
    "Report {phrase}.",
    "Identify {phrase}.",
    "Find {phrase}.",
    "Write down {phrase}.",
    "Can you name {phrase}?",
    "Can you give me {phrase}?",
    "What's {phrase}?",
    "Your task: name {phrase}.",
    "{phrase}, please.",
    "{phrase} is what?",
    "Answer with {phrase}.",
    "Let me have {phrase}.",
    "Give {phrase} as your answer.",
    "Please report {phrase}.",
    "Tell us {phrase}.",
)
"""Training only (`carrier_wording_fraction`): sentence forms around a question's noun phrase (`QUESTION_PHRASES`),
so that a model learns the phrase, not the sentence around it, says what is asked. None starts as a held-out
structure does or uses a word of their frames (`tests/test_synth.py`), so held-out structures stay unseen."""
CLAUSE_CARRIERS = (
    "Say {phrase}.",
    "Tell us {phrase}.",
    "Find out {phrase}.",
    "Work out {phrase}.",
    "Determine {phrase}.",
    "Can you say {phrase}?",
    "Please state {phrase}.",
)
"""Carriers that also take a question clause ("how many shapes the image holds", `QUESTION_CLAUSES`)."""
QUESTION_PHRASES = {
    "colour": ["the {colour} of the {largest} {shape}", "the {colour} of the {largest} {shape} in the {image}"],
    "shape": ["the kind of the {largest} {shape}", "the type of the {largest} {shape}",
              "the kind of the {largest} {shape} in the {image}"],
    "count": ["the number of {shapes}", "the number of {shapes} in the {image}"],
    "pattern": ["the {pattern} on the {label}", "the {pattern} of the {label}",
                "the {pattern} on the {label} in the {image}"],
    "majority": ["the {pattern} on most {labels}", "the {pattern} of most {labels}",
                 "the {pattern} on most {labels} in the {image}"],
}
"""Each question type's noun phrases for `CARRIER_TEMPLATES`. "in the image" ends a phrase of every type: in the
trained templates only count questions say "in", and the ladder model read every upper-case question with " IN" in it
("... IN ONE WORD", "... IN A WORD") as a count."""
QUESTION_CLAUSES = {
    "colour": ["what {colour} the {largest} {shape} is"],
    "shape": ["what kind of shape the {largest} {shape} is"],
    "count": ["how many {shapes} the {image} holds", "how many {shapes} there are"],
    "pattern": ["which {pattern} the {label} shows"],
    "majority": ["which {pattern} most {labels} show"],
}


@functools.cache
def carrier_wordings(question_type: str) -> tuple[str, ...]:
    """Every wording of `question_type` in a carrier form (`CARRIER_TEMPLATES` around its `QUESTION_PHRASES`,
    `CLAUSE_CARRIERS` around those and its `QUESTION_CLAUSES`), less any that a held-out set or another question
    type's trained wordings already hold."""
    taken = _taken_words(question_type)
    phrases = QUESTION_PHRASES[question_type]
    forms = [carrier.format(phrase=phrase) for carrier in CARRIER_TEMPLATES for phrase in phrases]
    forms += [carrier.format(phrase=phrase) for carrier in CLAUSE_CARRIERS
              for phrase in phrases + QUESTION_CLAUSES[question_type]]
    bases = [base for form in dict.fromkeys(forms) for base in _fill(form)]
    return tuple(dict.fromkeys(text for base in bases if _words(base) not in taken for text in _styled(base)))


@functools.cache
def _taken_words(question_type: str) -> frozenset[str]:
    """The words (`_words`) of every held-out wording and of every other question type's trained wording: what a
    training-only wording of `question_type` (paired, carrier, "do") may not be."""
    taken = {_words(text) for qtype in QUESTION_TYPES for ws in ("heldout", "heldout-templates")
             for text in wordings(qtype, ws)}
    taken |= {_words(text) for qtype in QUESTION_TYPES if qtype != question_type for text in wordings(qtype, "train")}
    return frozenset(taken)


def _words(text: str) -> str:
    """A wording's lower-cased words, without case or punctuation."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def training_wording(rng: np.random.Generator, question_type: str, paired_fraction: float = 0.0,
                     carrier_fraction: float = 0.0) -> str:
    """A trained wording of `question_type`; for a label question, with probability `paired_fraction`, one of its
    `paired_wordings`; otherwise, with probability `carrier_fraction`, one of its `carrier_wordings`. Fractions of 0
    draw as `pick_wording` does, so a stream without pairs or carriers stays as it was."""
    if paired_wordings(question_type) and paired_fraction > 0 and rng.random() < paired_fraction:
        return pick_paired(rng, question_type)
    if carrier_fraction > 0 and rng.random() < carrier_fraction:
        return pick_carrier(rng, question_type)
    return pick_wording(rng, question_type, "train")


DO_QUESTIONS = {
    "colour": ["Which {colour} do you find on the {largest} {shape}?",
               "What {colour} do we have for the {largest} {shape}?"],
    "shape": ["What kind of shape do you find the {largest} {shape} to be?",
              "Which kind of shape do we have in the {largest} {shape}?"],
    "count": ["How many {shapes} do you count?", "How many {shapes} do we have in the {image}?"],
    "pattern": ["Which {pattern} do you find on the {label}?", "What {pattern} do we have on the {label}?"],
}
"""Training only (a share of `pick_carrier`'s draws): questions about one object or the whole image that say "do".
In the trained templates only questions about most labels do ("Which pattern do most labels show?"), and the ladder
model resized most small labels asked "Looking at the label, which pattern do you see?" (docs/ladder.md). None uses a
word of the held-out structures' frames or starts with a phrase before its question (`tests/test_synth.py`). "Which
pattern do you find on the label?" is also one of `PAIRED_TEMPLATES` (the same question)."""
DO_SHARE = 0.25
"""The share of `pick_carrier`'s draws that are `DO_QUESTIONS` for the question types that have them."""


@functools.cache
def do_wordings(question_type: str) -> tuple[str, ...]:
    """Every wording of `question_type`'s `DO_QUESTIONS` (slots filled, each style), less any that a held-out set or
    another question type's trained wordings already hold."""
    taken = _taken_words(question_type)
    bases = [base for form in DO_QUESTIONS.get(question_type, []) for base in _fill(form)]
    return tuple(dict.fromkeys(text for base in bases if _words(base) not in taken for text in _styled(base)))


def pick_carrier(rng: np.random.Generator, question_type: str) -> str:
    """One of `do_wordings(question_type)` with probability `DO_SHARE` where the type has them, else one of
    `carrier_wordings(question_type)`, drawn at random."""
    options = do_wordings(question_type)
    if not options or rng.random() >= DO_SHARE:
        options = carrier_wordings(question_type)
    return options[int(rng.integers(len(options)))]


def pick_paired(rng: np.random.Generator, question_type: str) -> str:
    """One of `paired_wordings(question_type)`, drawn at random."""
    options = paired_wordings(question_type)
    return options[int(rng.integers(len(options)))]


def frame_wording(rng: np.random.Generator, question: str, fraction: float = 1.0) -> str:
    """With probability `fraction`, `question` inside one of `TRAIN_FRAMES` drawn at random; else `question` as it
    is. `fraction` 0 draws nothing from `rng`, so a stream without frames stays as it was."""
    if fraction <= 0 or rng.random() >= fraction:
        return question
    return TRAIN_FRAMES[int(rng.integers(len(TRAIN_FRAMES)))].format(question=question)


NOISE_LETTERS = "bcdfghjklmnpqrstvwxz"
"""Letters of the nonsense words `noise_wording` adds: consonants only, so no word of any wording can come out."""


def noise_wording(rng: np.random.Generator, question: str, fraction: float = 1.0) -> str:
    """With probability `fraction`, `question` with one or two nonsense words (2-5 consonants, in the question's case)
    before its closing punctuation or at its start: a model trained on them learns that words it cannot read (as
    rare words fall apart into single letters) do not change what is asked. `fraction` 0 draws nothing from `rng`."""
    if fraction <= 0 or rng.random() >= fraction:
        return question
    words = ["".join(NOISE_LETTERS[int(i)] for i in rng.integers(len(NOISE_LETTERS), size=int(rng.integers(2, 6))))
             for _ in range(int(rng.integers(1, 3)))]
    noise = " ".join(words).upper() if question.isupper() else " ".join(words)
    if rng.random() < 0.5:
        rest = question if question.isupper() else question[0].lower() + question[1:]
        return f"{noise[0].upper()}{noise[1:]} {rest}"
    body = question.rstrip("?.!")
    return f"{body} {noise}{question[len(body):]}"


def make_item(seed: int, index: int, wording_set: WordingSet = "train") -> Item:
    """Item `index` of the stream `seed`: families cycle coarse, fine_small, fine_large.

    The image does not depend on `wording_set`: both sets ask about the same images."""
    rng = np.random.default_rng([seed, index])
    family = FAMILIES[index % 3]
    scene, question_type = scene_for(rng, family)
    return _item(scene, question_type, family, (seed, index), wording_set, f"s{seed}-{index}", scene.label_box)


def _item(scene: Scene, question_type: str, family: str, key: tuple[int, int], wording_set: WordingSet, uid: str,
          label_box: tuple[int, int, int, int] | None) -> Item:
    """The item asking `question_type` of `scene`, in a wording drawn from its own stream (`key` and the set)."""
    wording_rng = np.random.default_rng([*key, 1 + WORDING_SETS.index(wording_set)])
    return Item(
        image=scene.image,
        question=pick_wording(wording_rng, question_type, wording_set),
        answer=answer_for(scene, question_type),
        family=family,
        question_type=question_type,
        needs_high_res=RIGHT_ACTION[family] != "answer",
        uid=uid,
        wording=wording_set,
        label_box=label_box,
        shapes=tuple(scene.shapes),
    )


COARSE_TYPES = ("colour", "shape", "count")


def scene_for(rng: np.random.Generator, family: str, coarse_weights: dict[str, float] | None = None
              ) -> tuple[Scene, str]:
    """A scene of `family` and a question type asked of it; `coarse_weights` (question type -> relative weight; None:
    equally often) draws some coarse question types more often."""
    if family == "coarse":
        weights = None if coarse_weights is None else shares(coarse_weights, COARSE_TYPES, "coarse_weights")
        return make_scene(rng), str(rng.choice(COARSE_TYPES, p=weights))
    if family == "fine_spread":
        return make_spread_scene(rng), "majority"
    return make_scene(rng, label_size=family.removeprefix("fine_")), "pattern"


def shares(weights: dict[str, float], names: tuple[str, ...], field_name: str) -> np.ndarray:
    """`weights` (name -> relative weight) as probabilities over `names`; a name left out is not drawn."""
    unknown = sorted(set(weights) - set(names))
    if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{field_name} must weigh some of {', '.join(names)} with weights >= 0 and a positive "
                         f"sum; got {weights}")
    raw = np.array([float(weights.get(name, 0.0)) for name in names])
    return raw / raw.sum()


def split_items(split: str, n: int, seed: int = 0, wordings: WordingSet = "train") -> list[Item]:
    """The first `n` items of a held-out split ("train", "validation" or "test"), asked in the
    `wordings` set ("train", or "heldout": wordings no training ever sees)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if split == "train" and wordings != "train":
        raise ValueError("held-out wordings are for evaluation splits only, never for training")
    stream = seed * 10 + SPLIT_SEEDS[split]
    return [make_item(stream, index, wordings) for index in range(n)]


# ---------------------------------------------------------------- the ladder world (issue 27)

LADDER_MIX = ("coarse", "fine_large", "fine_small", "coarse", "fine_large", "fine_spread",
              "coarse", "fine_large", "coarse", "fine_small", "fine_large", "coarse")
"""The evaluation mix, item `index` is of family `LADDER_MIX[index % 12]`: 5 coarse, 4 large labels, 2 small, 1
spread. A resize costs 1.25x the full view's tokens (both views stay in context), so the mix's oracle spends about
0.37x: most questions need no more than the low view, as in real use."""
LADDER_TRAIN_MIX = LADDER_FAMILIES
"""The training mix: each family equally often (the rare spread family would barely be seen otherwise)."""
LADDER_SPLIT_SEEDS = {"train": 4, "validation": 5, "test": 6}


def make_ladder_item(seed: int, index: int, wording_set: WordingSet = "train",
                     mix: tuple[str, ...] = LADDER_MIX) -> Item:
    """Item `index` of the ladder stream `seed`, of family `mix[index % len(mix)]`; the image does not depend on
    `wording_set`."""
    rng = np.random.default_rng([seed, index, 27])
    family = mix[index % len(mix)]
    scene, question_type = scene_for(rng, family)
    return _item(scene, question_type, family, (seed, index), wording_set, f"l{seed}-{index}",
                 scene.label_box if family == "fine_small" else None)


def ladder_items(split: str, n: int, seed: int = 0, wordings: WordingSet = "train") -> list[Item]:
    """The first `n` items of a ladder split: evaluation splits in `LADDER_MIX`, the train split in
    `LADDER_TRAIN_MIX`; only the train wordings may be trained on."""
    if split not in LADDER_SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(LADDER_SPLIT_SEEDS)}")
    if split == "train" and wordings != "train":
        raise ValueError("held-out wordings are for evaluation splits only, never for training")
    stream = seed * 10 + LADDER_SPLIT_SEEDS[split]
    mix = LADDER_TRAIN_MIX if split == "train" else LADDER_MIX
    return [make_ladder_item(stream, index, wordings, mix) for index in range(n)]


WORLDS = {"synth": split_items, "ladder": ladder_items}
"""The generated worlds training can draw from, by name: each a `(split, n, seed, wordings)` items function."""
