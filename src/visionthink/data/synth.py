"""The synthetic world: images whose questions know whether low resolution is enough.

Every image holds 1-3 large shapes and a 28 px label in the top-left corner.

- `coarse`: colour, shape or count of the large shapes. Answerable at low resolution.
- `fine_small`: "What pattern is on the label?" with the pattern drawn in 1 px lines/dots,
  softened and grained so that halving the image washes it out. Needs full resolution.
- `fine_large`: the same question, the pattern drawn in 4 px bars. Legible at low resolution.

The label's mean brightness does not depend on the pattern, so the low-res view carries
(almost) no trace of a small pattern. `tests/test_synth.py` checks this with a probe.
Generation is deterministic in (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 112
LABEL_SIZE = 28
FAMILIES = ("coarse", "fine_small", "fine_large")
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
QUESTIONS = {
    "colour": "What colour is the largest shape?",
    "shape": "What kind of shape is the largest shape?",
    "count": "How many shapes are there?",
    "pattern": "What pattern is on the label?",
}
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
"""Held-out splits: each split draws from its own seed stream, so no image repeats across splits."""


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
    image: Image.Image = field(repr=False)

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


def pattern_array(pattern: str, size: str, rng: np.random.Generator) -> np.ndarray:
    """A LABEL_SIZE square of pattern values in {0, 1}, with a random phase."""
    period = 2 if size == "small" else 8
    bar = 1 if size == "small" else 4
    y, x = np.mgrid[0:LABEL_SIZE, 0:LABEL_SIZE]
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


_HANN = np.sin(np.pi * (np.arange(LABEL_SIZE) + 0.5) / LABEL_SIZE) ** 2
SMALL_WINDOW = np.outer(_HANN, _HANN)
"""Fades a small pattern out towards the label's edges. A 1 px pattern that stops abruptly leaks
through the low-res view's LANCZOS filter along the edges (a different trace for each pattern);
faded out, it cancels everywhere."""


def render_label(pattern: str, size: str, rng: np.random.Generator) -> np.ndarray:
    """The label as an RGB uint8 array: a zero-mean pattern on a random grey, soft edges and grain."""
    values = pattern_array(pattern, size, rng)
    values = values - values.mean()
    if size == "small":
        values = values * SMALL_WINDOW
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


def _place_shapes(rng: np.random.Generator, count: int) -> list[Shape]:
    for _attempt in range(200):
        radii = sorted(rng.uniform(11, 17, size=count), reverse=True)
        radii[0] = rng.uniform(21, 26) if count > 1 else rng.uniform(14, 26)
        shapes: list[Shape] = []
        for radius in radii:
            for _try in range(60):
                cx = rng.uniform(radius + 2, IMAGE_SIZE - radius - 2)
                cy = rng.uniform(radius + 2, IMAGE_SIZE - radius - 2)
                if cx - radius < LABEL_SIZE + 4 and cy - radius < LABEL_SIZE + 4:
                    continue
                if all((cx - s.cx) ** 2 + (cy - s.cy) ** 2 > (radius + s.radius + 3) ** 2 for s in shapes):
                    shapes.append(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), cx, cy, radius))
                    break
        if len(shapes) == count:
            return shapes
    raise RuntimeError("could not place shapes")  # pragma: no cover - 200 attempts always suffice


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


def make_scene(rng: np.random.Generator, label_size: str | None = None) -> Scene:
    """Draw one random scene; `label_size` forces "small" or "large"."""
    label_size = label_size or str(rng.choice(["small", "large"]))
    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    shapes = _place_shapes(rng, int(rng.integers(1, 4)))
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        _draw_shape(draw, shape, background)
    pattern = str(rng.choice(PATTERNS))
    canvas.paste(Image.fromarray(render_label(pattern, label_size, rng)), (0, 0))
    noise = rng.normal(0, 3, (IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = (np.asarray(canvas, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)
    return Scene(shapes=shapes, pattern=pattern, label_size=label_size, image=Image.fromarray(pixels))


def answer_for(scene: Scene, question_type: str) -> str:
    if question_type == "colour":
        return scene.largest.colour
    if question_type == "shape":
        return scene.largest.kind
    if question_type == "count":
        return str(len(scene.shapes))
    return scene.pattern


def scene_items(scene: Scene, uid: str) -> list[Item]:
    """Every question one scene answers: three coarse ones and the label question."""
    items = [
        Item(scene.image, QUESTIONS[q], answer_for(scene, q), "coarse", q, False, f"{uid}-{q}")
        for q in ("colour", "shape", "count")
    ]
    family = f"fine_{scene.label_size}"
    items.append(
        Item(scene.image, QUESTIONS["pattern"], scene.pattern, family, "pattern",
             scene.label_size == "small", f"{uid}-pattern")
    )
    return items


def make_item(seed: int, index: int) -> Item:
    """Item `index` of the stream `seed`: families cycle coarse, fine_small, fine_large."""
    rng = np.random.default_rng([seed, index])
    family = FAMILIES[index % 3]
    if family == "coarse":
        scene = make_scene(rng)
        question_type = str(rng.choice(["colour", "shape", "count"]))
    else:
        scene = make_scene(rng, label_size=family.removeprefix("fine_"))
        question_type = "pattern"
    return Item(
        image=scene.image,
        question=QUESTIONS[question_type],
        answer=answer_for(scene, question_type),
        family=family,
        question_type=question_type,
        needs_high_res=family == "fine_small",
        uid=f"s{seed}-{index}",
    )


def split_items(split: str, n: int, seed: int = 0) -> list[Item]:
    """The first `n` items of a held-out split ("train", "validation" or "test")."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    stream = seed * 10 + SPLIT_SEEDS[split]
    return [make_item(stream, index) for index in range(n)]
