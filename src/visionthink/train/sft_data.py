"""Supervised conversations on the synthetic world, and the auxiliary perception targets.

The resize decision stays uninformed: a low-res conversation calls the tool with a fixed
probability whatever the item needs, so RL has to learn *when* to ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch

from visionthink import protocol
from visionthink.data import synth
from visionthink.images import PixelGrid, Views, make_views, zoom_region
from visionthink.profiles import VISIONTHINK, VISIONTHINK_ZOOM
from visionthink.tokens import IGNORE_INDEX, collate, encode_for_training
from visionthink.tools import RESIZE, ZOOM
from visionthink.tools.zoom import oracle_box

ZOOM_PROFILE = VISIONTHINK_ZOOM.name
"""The profile of the zoom and ladder conversations."""

THINK = {
    "colour": "Find the largest shape and its colour.",
    "shape": "Find the largest shape and its kind.",
    "count": "Count the shapes.",
    "pattern": "Read the pattern on the label.",
    "majority": "Read the patterns on the labels.",
}
"""The short reasoning the tiny model is taught for each question type."""

Start = Literal["low", "high"]


def think_for(question: str, question_type: str | None = None) -> str:
    """The taught reasoning for a question (its type given, or looked up among the world's wordings)."""
    return THINK.get(question_type or synth.question_type_of(question) or "", "Look at the image.")


def listing_think(shapes: Sequence[synth.Shape]) -> str:
    """A count question's think that names the shapes left to right ("Count the shapes: green ring, orange
    circle."), so that the text model reads one shape at a time and the count is the list's length."""
    names = ", ".join(f"{shape.colour} {shape.kind}" for shape in sorted(shapes, key=lambda shape: shape.cx))
    return f"{THINK['count'].removesuffix('.')}: {names}."


def taught_think(question: str, question_type: str, shapes: Sequence[synth.Shape], list_shapes: bool = False) -> str:
    """The think a stage teaches: `listing_think` for a count question under `list_shapes`, else `think_for`'s."""
    listed = list_shapes and question_type == "count"
    return listing_think(shapes) if listed else think_for(question, question_type)


def conversation(question: str, answer: str, views, start: Start, resize: bool,
                 question_type: str | None = None) -> list[protocol.Message]:
    """A protocol conversation with the canonical turns: direct answer, or resize then answer."""
    think = think_for(question, question_type)
    messages = VISIONTHINK.first_turn(question, views.low if start == "low" else views.high)
    if resize:
        messages += VISIONTHINK.call_turns(think, RESIZE.name, RESIZE.fixed_arguments, views)
    messages.append(protocol.assistant_turn(VISIONTHINK.answer_text(think, answer)))
    return messages


def tokenizer_corpus(repeats: int = 20) -> list[str]:
    """Texts the tiny tokenizer is trained on: canonical conversations of this world, rendered, and every
    training wording (held-out wordings never reach it)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from visionthink.models.processor import chat_template

    no_images = SimpleNamespace(low=None, high=None)
    answers = {
        "colour": list(synth.COLOURS), "shape": list(synth.SHAPES), "count": ["1", "2", "3"],
        "pattern": list(synth.PATTERNS), "majority": list(synth.PATTERNS),
    }
    conversations = [
        conversation(question, answer, no_images, "low", resize)
        for question_type, question in synth.QUESTIONS.items()
        for answer in answers[question_type]
        for resize in (False, True)
    ]
    rendered, _ = render_jinja_template(
        conversations=conversations, tools=VISIONTHINK.template_tools(), chat_template=chat_template()
    )
    questions = [text for qtype in synth.QUESTION_TYPES for text in synth.wordings(qtype, "train")]
    return rendered * repeats + questions


@dataclass
class Example:
    """One training conversation and the perception targets of its images."""

    messages: list[protocol.Message]
    aux: list[dict[str, torch.Tensor]]
    family: str
    start: Start
    resized: bool
    legible: bool = True
    """Whether the first image shows the answer (False: a small label's pattern at low resolution)."""
    with_tools: bool = True
    """False for a perception-stage conversation, rendered without the protocol's tool block."""
    protocol: str = "visionthink"
    """The profile to render it with: "visionthink-zoom" for the conversations of `zoom_fraction` > 0."""
    zoomed: bool = False
    """The conversation calls `zoom_image` on the label's true box (`zoom_fraction`)."""


AUX_HEADS = {"count": 4, "shape": 1 + len(synth.SHAPES), "colour": 1 + len(synth.COLOURS), "largest": 2,
             "pattern": len(synth.PATTERNS), "legible": 2}
"""Classes per auxiliary head (per merged visual token)."""
GROUNDING_SIDE = 3
"""Grounding targets cover low views of up to this many tokens a side (world v2's low views are 2x2, 3x2, 2x3)."""
GROUNDING_CLASSES = {"label_cell": 1 + (2 * GROUNDING_SIDE) ** 2, "token_position": GROUNDING_SIDE ** 2,
                     "label_where": (2 * GROUNDING_SIDE) ** 2}
"""Classes of the grounding heads (per merged visual token of a low view): `label_cell` is 0 on tokens without the
label and 1 + the raster index of the half-token cell that holds the label's centre on the token that holds it;
`token_position` is each token's own raster index (row * GROUNDING_SIDE + col); `label_where` is, on every token, the
label's half-token cell (so the text model can read it from any image token). The vision tower's rotary positions are
relative: without these a token does not know where in the image it is, so no box can say where the label is."""


def pattern_legible(label_size: str, high: bool) -> bool:
    """Whether a view shows the label's pattern: small labels only at full resolution (`high`)."""
    return label_size == "large" or high


def label_tokens(box: tuple[int, int, int, int], scale: float, cell: float, cols: int, rows: int) -> list[int]:
    """Raster indices of the visual tokens that hold at least a quarter of the label (at least the one
    holding its centre); `scale` maps image px to view px, `cell` is a token's side in view px."""
    x1, y1, x2, y2 = (v * scale for v in box)
    area = (x2 - x1) * (y2 - y1)
    found = []
    for row in range(rows):
        for col in range(cols):
            overlap_w = min(x2, (col + 1) * cell) - max(x1, col * cell)
            overlap_h = min(y2, (row + 1) * cell) - max(y1, row * cell)
            if overlap_w > 0 and overlap_h > 0 and overlap_w * overlap_h >= area / 4:
                found.append(row * cols + col)
    centre = min(int((y1 + y2) / 2 // cell), rows - 1) * cols + min(int((x1 + x2) / 2 // cell), cols - 1)
    return found or [centre]


def aux_targets(scene: synth.Scene, view_size: tuple[int, int], grid: PixelGrid) -> dict[str, torch.Tensor]:
    """Per visual token of a view `view_size` (width, height) of the scene: objects centred there, their
    shape and colour, the largest one, the label pattern and whether the view resolves it.

    These are privileged labels from the generator, used only to teach a from-scratch
    vision tower to see. The pattern target sits on the label's tokens and is ignored
    when the view is too coarse to show a small label; the legibility target, on the same
    tokens, says which: without it a small label's grain and a large checker look alike at
    low resolution (both read "checker").
    """
    width, height = view_size
    cols, rows = width // grid.factor, height // grid.factor
    scale = width / scene.image.width
    n = rows * cols
    count = torch.zeros(n, dtype=torch.long)
    shape = torch.zeros(n, dtype=torch.long)
    colour = torch.zeros(n, dtype=torch.long)
    largest = torch.zeros(n, dtype=torch.long)
    biggest = scene.largest
    for s in sorted(scene.shapes, key=lambda s: s.radius):
        col = min(int(s.cx * scale // grid.factor), cols - 1)
        index = min(int(s.cy * scale // grid.factor), rows - 1) * cols + col
        count[index] += 1
        shape[index] = 1 + synth.SHAPES.index(s.kind)
        colour[index] = 1 + list(synth.COLOURS).index(s.colour)
        if s is biggest:
            largest[index] = 1
    pattern = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    legible = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    readable = pattern_legible(scene.label_size, width >= scene.image.width)
    for label_pattern, (x1, y1, x2, y2) in scene.all_labels:
        if x2 * scale <= 0 or y2 * scale <= 0 or x1 * scale >= width or y1 * scale >= height:
            continue  # outside this view (a crop)
        tokens = label_tokens((x1, y1, x2, y2), scale, grid.factor, cols, rows)
        legible[tokens] = int(readable)
        if readable:
            pattern[tokens] = synth.PATTERNS.index(label_pattern)
    return {"count": count.clamp(max=3), "shape": shape, "colour": colour, "largest": largest, "pattern": pattern,
            "legible": legible, **grounding_targets(scene.label_box, scale, grid.factor, cols, rows)}


def grounding_targets(box: tuple[int, int, int, int], scale: float, cell: float, cols: int, rows: int
                      ) -> dict[str, torch.Tensor]:
    """`GROUNDING_CLASSES` targets for the tokens of a view (`cols` x `rows` tokens of `cell` px; `scale` maps image
    px to view px). Ignored on views that show the label at a token or more (scale >= 1: the full view, a crop)
    and on views larger than `GROUNDING_SIDE` tokens a side."""
    n = rows * cols
    if scale >= 1 or cols > GROUNDING_SIDE or rows > GROUNDING_SIDE:
        return {name: torch.full((n,), IGNORE_INDEX, dtype=torch.long) for name in GROUNDING_CLASSES}
    x1, y1, x2, y2 = (v * scale for v in box)
    half = cell / 2
    sub_col = min(int((x1 + x2) / 2 // half), 2 * cols - 1)
    sub_row = min(int((y1 + y2) / 2 // half), 2 * rows - 1)
    cell_index = sub_row * 2 * GROUNDING_SIDE + sub_col
    label = torch.zeros(n, dtype=torch.long)
    label[sub_row // 2 * cols + sub_col // 2] = 1 + cell_index
    index = torch.arange(n)
    return {"label_cell": label, "token_position": index // cols * GROUNDING_SIDE + index % cols,
            "label_where": torch.full((n,), cell_index, dtype=torch.long)}


def perception_conversation(question: str, answer: str, image, question_type: str,
                            think: str | None = None) -> list[protocol.Message]:
    """The short form of a direct answer: no tool block, no instruction; image and question, think (None: the taught
    one, `think_for`), answer."""
    think = think or think_for(question, question_type)
    return [{"role": "user", "content": [protocol.image_part(image), protocol.text_part(question)]},
            protocol.assistant_turn(protocol.answer_text(think, answer))]


def _draw(rng: np.random.Generator, grid: PixelGrid, full_res_fraction: float):
    """A fresh scene, a random question type, its family and views, the first image's resolution, the
    answer and a random training wording (in this order of random draws)."""
    scene = synth.make_scene(rng)
    question_type = str(rng.choice(["colour", "shape", "count", "pattern", "pattern"]))
    family = synth.family_of(scene, question_type)
    views = make_views(scene.image, grid)
    start: Start = "high" if rng.random() < full_res_fraction else "low"
    answer = synth.answer_for(scene, question_type)
    question = synth.pick_wording(rng, question_type, "train")
    return scene, question_type, family, views, start, answer, question


def sample_example(rng: np.random.Generator, grid: PixelGrid, resize_fraction: float,
                   full_res_fraction: float, perception: bool = False, zoom_fraction: float = 0.0,
                   label_call_fraction: float | None = None, grounding_fraction: float = 0.0,
                   perception_fraction: float = 0.0) -> Example:
    """A fresh random scene, a random question about it in a random training wording, and a random
    conversation shape. `perception`: the short form (`perception_conversation`) on a view that shows
    the answer. `zoom_fraction` > 0 (off by default: the recipe's draws are unchanged): protocol conversations
    in the `visionthink-zoom` profile, some zooming on the label's true box (`sample_zoom_example`); of these, a
    `grounding_fraction` share is the short form of the zoom call (`sample_grounding_example`) and a
    `perception_fraction` share the short form of a direct answer."""
    if zoom_fraction > 0 and not perception:
        short_form = rng.random() if grounding_fraction > 0 or perception_fraction > 0 else 1.0
        if short_form < grounding_fraction:
            return sample_grounding_example(rng, grid)
        if short_form >= grounding_fraction + perception_fraction:
            return sample_zoom_example(rng, grid, resize_fraction, full_res_fraction, zoom_fraction,
                                       label_call_fraction)
        perception = True
    scene, question_type, family, views, start, answer, question = _draw(rng, grid, full_res_fraction)
    if perception:
        start = "high" if family == "fine_small" else start
        image = views.high if start == "high" else views.low
        messages = perception_conversation(question, answer, image, question_type)
        return Example(messages, [aux_targets(scene, image.size, grid)], family, start, False, True, False)
    resize = start == "low" and rng.random() < resize_fraction
    messages = conversation(question, answer, views, start, resize, question_type)
    shown = [views.low if start == "low" else views.high] + ([views.high] if resize else [])
    legible = question_type != "pattern" or pattern_legible(scene.label_size, start == "high")
    return Example(messages, [aux_targets(scene, image.size, grid) for image in shown], family, start, resize,
                   legible)


def label_zoom_box(scene: synth.Scene, views: Views) -> tuple[int, int, int, int]:
    """The generator's label box as a zoom call's box: whole low-view pixels that cover it, as `oracle-zoom` gets it
    (`engines.base.oracle_box`), inside the view (the supervision of the call's argument; a pretrained VLM grounds
    regions already, the from-scratch tiny model cannot)."""
    x1, y1, x2, y2 = oracle_box(scene.label_box, scene.image.size, views.low.size)
    return x1, y1, min(views.low.width, x2), min(views.low.height, y2)


def zoom_conversation(question: str, answer: str, views: Views, start: Start, call: Literal["none", "resize", "zoom"],
                      grid: PixelGrid, question_type: str | None = None,
                      box: tuple[int, int, int, int] | None = None, think: str | None = None
                      ) -> list[protocol.Message]:
    """A `visionthink-zoom` conversation with canonical turns: direct answer, resize then answer, or zoom on `box`
    (low-view pixels) then answer on the crop; `think` None: the taught one (`think_for`)."""
    think = think or think_for(question, question_type)
    messages = VISIONTHINK_ZOOM.first_turn(question, views.low if start == "low" else views.high)
    if call == "resize":
        messages += VISIONTHINK_ZOOM.call_turns(think, RESIZE.name, RESIZE.fixed_arguments, views, grid)
    elif call == "zoom":
        if box is None:
            raise ValueError("a zoom conversation needs its box")
        messages += VISIONTHINK_ZOOM.call_turns(think, ZOOM.name, {"box": box}, views, grid)
    messages.append(protocol.assistant_turn(VISIONTHINK_ZOOM.answer_text(think, answer)))
    return messages


def region_aux_targets(scene: synth.Scene, region: tuple[int, int, int, int], grid: PixelGrid
                       ) -> dict[str, torch.Tensor]:
    """`aux_targets` of a zoom's crop (`region` of the image at full resolution, as `images.zoom_region` gives
    it): the shapes centred inside it, the true largest one, and the label's pattern (legible: full resolution)."""
    left, top, right, bottom = region
    inside = [shape for shape in scene.shapes if left <= shape.cx < right and top <= shape.cy < bottom]
    x1, y1, x2, y2 = scene.label_box
    labels = [(pattern, (a - left, b - top, c - left, d - top)) for pattern, (a, b, c, d) in scene.labels]
    crop = replace(scene, shapes=[replace(s, cx=s.cx - left, cy=s.cy - top) for s in inside],
                   label_box=(x1 - left, y1 - top, x2 - left, y2 - top), image=scene.image.crop(region), labels=labels)
    index = next((i for i, shape in enumerate(inside) if shape is scene.largest), None)
    return aux_targets(_WithLargest(crop, None if index is None else crop.shapes[index]), crop.image.size, grid)


class _WithLargest:
    """A scene whose `largest` is given: the whole scene's largest shape when it is in view, else None (a crop's
    shapes are not the scene's, and the largest one in view is not the largest)."""

    def __init__(self, scene: synth.Scene, largest: synth.Shape | None):
        self._scene, self.largest = scene, largest

    def __getattr__(self, name):
        return getattr(self._scene, name)


def sample_grounding_example(rng: np.random.Generator, grid: PixelGrid) -> Example:
    """The short form of a zoom call (no tool block, as `perception_conversation`): the low view and a label question,
    answered by the `zoom_image` call on the label's true box. A from-scratch text model learned to read the image in
    the short form first (stage 0); this teaches it to read where the label is the same way."""
    scene, _, _, views, _, _, _ = _draw(rng, grid, 0.0)
    question = synth.pick_wording(rng, "pattern", "train")
    family = synth.family_of(scene, "pattern")
    call = VISIONTHINK_ZOOM.call_text(think_for(question, "pattern"), ZOOM.name, {"box": label_zoom_box(scene, views)})
    messages = [{"role": "user", "content": [protocol.image_part(views.low), protocol.text_part(question)]},
                protocol.assistant_turn(call)]
    return Example(messages, [aux_targets(scene, views.low.size, grid)], family, "low", False,
                   pattern_legible(scene.label_size, False), with_tools=False, protocol="visionthink-zoom", zoomed=True)


def zoom_example_parts(scene: synth.Scene, question: str, answer: str, views: Views, start: Start,
                       call: Literal["none", "resize", "zoom"], grid: PixelGrid, question_type: str,
                       box: tuple[int, int, int, int] | None, think: str | None = None
                       ) -> tuple[list[protocol.Message], list[dict]]:
    """A `visionthink-zoom` conversation (`zoom_conversation`) and the perception targets of each image it shows:
    the first view, then the full view after a resize or the crop after a zoom."""
    messages = zoom_conversation(question, answer, views, start, call, grid, question_type, box, think)
    aux = [aux_targets(scene, (views.low if start == "low" else views.high).size, grid)]
    if call == "resize":
        aux.append(aux_targets(scene, views.high.size, grid))
    elif call == "zoom":
        aux.append(region_aux_targets(scene, zoom_region(box, views, grid), grid))
    return messages, aux


def sample_zoom_example(rng: np.random.Generator, grid: PixelGrid, resize_fraction: float, full_res_fraction: float,
                        zoom_fraction: float, label_call_fraction: float | None = None) -> Example:
    """`sample_example`'s protocol conversation in the `visionthink-zoom` profile: a low-res start calls a tool with
    probability `resize_fraction` whatever the item needs (the decision stays uninformed; GRPO learns it); a call
    about the label zooms on the label's true box (`label_zoom_box`) with probability `zoom_fraction`, else
    resizes. Coarse questions' calls resize (no box to supervise)."""
    scene, question_type, family, views, start, answer, question = _draw(rng, grid, full_res_fraction)
    label_question = question_type == "pattern" and label_call_fraction is not None
    call_fraction = label_call_fraction if label_question else resize_fraction
    calls = start == "low" and rng.random() < call_fraction
    zoom = calls and question_type == "pattern" and rng.random() < zoom_fraction
    box = label_zoom_box(scene, views) if zoom else None
    call = "zoom" if zoom else "resize" if calls else "none"
    messages, aux = zoom_example_parts(scene, question, answer, views, start, call, grid, question_type, box)
    legible = question_type != "pattern" or pattern_legible(scene.label_size, start == "high")
    return Example(messages, aux, family, start, call == "resize", legible, protocol="visionthink-zoom",
                   zoomed=zoom)


def decision_position(labels: torch.Tensor, decision_ids: list[int]) -> int:
    """Index of the token whose logits choose the first turn's `<answer>` or `<tool_call>` (one row's labels)."""
    hits = torch.isin(labels, torch.tensor(decision_ids)).nonzero().flatten()
    if len(hits) == 0:
        raise ValueError("no <answer> or <tool_call> among the trained tokens")
    return int(hits[0]) - 1


def box_position(labels: torch.Tensor, tool_call_id: int, digit_ids: list[int]) -> int:
    """Index of the token whose logits choose the zoom box's first digit (one row's labels; digits only appear in a
    call's box)."""
    calls = (labels == tool_call_id).nonzero().flatten()
    if len(calls) == 0:
        raise ValueError("no <tool_call> among the trained tokens")
    after = torch.isin(labels, torch.tensor(digit_ids)).nonzero().flatten()
    after = after[after > calls[0]]
    if len(after) == 0:
        raise ValueError("no box digits after the <tool_call>")
    return int(after[0]) - 1


def mask_first_turn(labels: torch.Tensor) -> torch.Tensor:
    """`labels` (one row) with its first assistant turn (the first run of trained tokens) set to IGNORE_INDEX."""
    labels = labels.clone()
    trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    if trained:
        end = trained[0]
        while end < labels.shape[0] and labels[end] != IGNORE_INDEX:
            end += 1
        labels[trained[0] : end] = IGNORE_INDEX
    return labels


def direct_answer_logits(model, processor, conversations: list[list[protocol.Message]], profile: str | None = None):
    """(logits, targets) of a teacher-forced pass over `conversations`, shifted so position i predicts
    target i, with `<tool_call>` banned: what a direct answer scores when resizing is not an option.
    Targets are IGNORE_INDEX outside assistant turns. `profile`: the protocol to render with (default
    `visionthink`)."""
    batch = collate(processor, [encode_for_training(processor, messages, protocol=profile)
                                for messages in conversations])
    device = next(model.parameters()).device
    labels = batch.pop("labels").to(device)
    batch = {key: value.to(device) for key, value in batch.items()}
    logits = model(**batch).logits[:, :-1].float()
    tool_call = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    return logits.index_fill(-1, torch.tensor([tool_call], device=device), float("-inf")), labels[:, 1:]


LADDER_ACTIONS = {"coarse": ("answer", "resize"), "fine_large": ("answer", "zoom", "resize"),
                  "fine_small": ("answer", "zoom", "resize"), "fine_spread": ("answer", "zoom", "resize")}
"""The first-turn actions a ladder conversation may take per family (a coarse question has no box to zoom on)."""
_CALLS = {"answer": "none", "zoom": "zoom", "resize": "resize"}


def sample_ladder_example(rng: np.random.Generator, grid: PixelGrid, full_res_fraction: float,
                          right_action_fraction: float, perception_fraction: float = 0.0,
                          grounding_fraction: float = 0.0,
                          family_weights: dict[str, float] | None = None, frame_fraction: float = 0.0,
                          crossed_wording_fraction: float = 0.0,
                          coarse_weights: dict[str, float] | None = None,
                          paired_wording_fraction: float = 0.0, carrier_wording_fraction: float = 0.0,
                          noise_word_fraction: float = 0.0, list_shapes: bool = False) -> Example:
    """A conversation of the ladder world (`synth.ladder_items`' four families, equally often) in the
    `visionthink-zoom` profile. A low-res start takes the family's right action (`synth.RIGHT_ACTION`) with
    probability `right_action_fraction`, else one of `LADDER_ACTIONS` at random: a soft warm start that GRPO
    sharpens. A zoom aims at the (first) label's true box. Of all examples, a `grounding_fraction` share about a
    label is the short form of the zoom call, a `perception_fraction` share the short form of a direct answer on a
    view that shows it. `family_weights` (family -> relative weight; None: equal) draws some families more often;
    a `frame_fraction` share of the questions is framed (`synth.frame_wording`). A `crossed_wording_fraction`
    share of the label questions is asked in the other label family's wording (`synth.CROSSED_WORDINGS`): the think,
    the answer and the right action stay the scene's, so the action must follow the image, not the wording.
    `coarse_weights` weighs the coarse question types (`synth.scene_for`). A `paired_wording_fraction` share of the
    label questions takes the other label family's sentence forms with its own number (`synth.paired_wordings`), a
    `carrier_wording_fraction` share of the rest a carrier sentence form (`synth.carrier_wordings`); a
    `noise_word_fraction` share of all questions gets nonsense words (`synth.noise_wording`). `list_shapes`: a count
    question's think names the shapes (`listing_think`)."""
    mix = synth.LADDER_TRAIN_MIX
    family = mix[int(rng.integers(len(mix)))] if family_weights is None \
        else str(rng.choice(mix, p=synth.shares(family_weights, mix, "family_weights")))
    scene, question_type = synth.scene_for(rng, family, coarse_weights)
    views = make_views(scene.image, grid)
    answer = synth.answer_for(scene, question_type)
    wording_type = synth.wording_type(rng, question_type, crossed_wording_fraction)  # the think follows the scene
    asked = synth.training_wording(rng, wording_type, paired_wording_fraction, carrier_wording_fraction)
    question = synth.noise_wording(rng, synth.frame_wording(rng, asked, frame_fraction), noise_word_fraction)
    think = taught_think(question, question_type, scene.shapes, list_shapes)
    form = rng.random()
    if form < grounding_fraction and question_type == "pattern":
        call = VISIONTHINK_ZOOM.call_text(think, ZOOM.name, {"box": label_zoom_box(scene, views)})
        messages = [{"role": "user", "content": [protocol.image_part(views.low), protocol.text_part(question)]},
                    protocol.assistant_turn(call)]
        return Example(messages, [aux_targets(scene, views.low.size, grid)], family, "low", False,
                       pattern_legible(scene.label_size, False), with_tools=False, protocol=ZOOM_PROFILE, zoomed=True)
    start: Start = "high" if rng.random() < full_res_fraction else "low"
    if form < grounding_fraction + perception_fraction:
        start = "high" if synth.RIGHT_ACTION[family] != "answer" else start
        image = views.high if start == "high" else views.low
        messages = perception_conversation(question, answer, image, question_type, think)
        return Example(messages, [aux_targets(scene, image.size, grid)], family, start, False, True, False)
    action = "answer"
    if start == "low":
        right = rng.random() < right_action_fraction
        options = LADDER_ACTIONS[family]
        action = synth.RIGHT_ACTION[family] if right else str(options[int(rng.integers(len(options)))])
    call = _CALLS[action]
    box = label_zoom_box(scene, views) if call == "zoom" else None
    messages, aux = zoom_example_parts(scene, question, answer, views, start, call, grid, question_type, box, think)
    legible = start == "high" or synth.RIGHT_ACTION[family] == "answer"
    return Example(messages, aux, family, start, call == "resize", legible, protocol=ZOOM_PROFILE,
                   zoomed=call == "zoom")
