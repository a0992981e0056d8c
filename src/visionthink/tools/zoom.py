"""`zoom_image`: one region of the full-resolution view. The box is in the low view's pixels; the reply holds that
region of the high view, grown to whole grid cells (`images.zoom_crop`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from visionthink.images import PixelGrid, Views, zoom_crop
from visionthink.tools.base import Tool

Box = tuple[float, float, float, float]


def check_box(value: Any, view_size: tuple[int, int] | None = None) -> tuple[Box | None, str | None]:
    """`(box, None)` for a usable box, else `(None, why not)`. Never raises.

    A box is four finite numbers [x1, y1, x2, y2] (not strings, not booleans) with x1 < x2 and y1 < y2. With
    `view_size` (the low view's width, height) it must also overlap the view: a box partly outside is clamped when
    cropped, one wholly outside is refused."""
    if not isinstance(value, (list, tuple)):
        return None, f"box must be a list [x1, y1, x2, y2] of numbers, not {type(value).__name__}"
    if len(value) != 4:
        return None, f"box must have 4 numbers [x1, y1, x2, y2], not {len(value)}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None, "box values must be numbers (pixels of the current image)"
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (OverflowError, ValueError):
        return None, "box values must be finite numbers"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "box values must be finite numbers"
    if not (x1 < x2 and y1 < y2):
        return None, "box is empty or inverted: it needs x1 < x2 and y1 < y2"
    if view_size is not None:
        width, height = view_size
        if min(x2, width) <= max(x1, 0.0) or min(y2, height) <= max(y1, 0.0):
            return None, f"box lies outside the image (the image is {width}x{height} pixels)"
    return (x1, y1, x2, y2), None


def oracle_box(box, source_size: tuple[int, int], low_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in the source image's pixels as whole low-view pixels that cover it (floor the start, ceil the end)."""
    sx, sy = low_size[0] / source_size[0], low_size[1] / source_size[1]
    x1, y1, x2, y2 = (float(v) for v in box)
    return (math.floor(x1 * sx), math.floor(y1 * sy), math.ceil(x2 * sx), math.ceil(y2 * sy))


@dataclass(frozen=True)
class ZoomTool(Tool):
    """A call runs with a `box` of four finite numbers, x1 < x2 and y1 < y2, that overlaps the low view."""

    oracle_needs_box = True

    def check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        if "box" not in arguments:
            return None, "zoom_image call without its required argument 'box'"
        box, error = check_box(arguments["box"])
        return (None, error) if error else ({"box": box}, None)

    def exact(self, arguments: dict[str, Any]) -> bool:
        return set(arguments) == {"box"}

    def check_in_view(self, arguments: dict[str, Any], views: Views) -> str | None:
        return check_box(arguments["box"], views.low.size)[1]

    def image(self, arguments: dict[str, Any], views: Views, grid: PixelGrid) -> Image.Image:
        return zoom_crop(arguments["box"], views, grid)

    def oracle_arguments(self, request, views: Views, source_size: tuple[int, int]) -> dict[str, Any]:
        return {"box": oracle_box(request.box, source_size, views.low.size)}

    def widest_arguments(self, low_size: tuple[int, int]) -> dict[str, Any]:
        return {"box": (0, 0, *low_size)}

    def canonical(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Whole numbers written as integers, others to one decimal."""
        return {"box": [int(v) if float(v).is_integer() else round(float(v), 1) for v in arguments["box"]]}


ZOOM = ZoomTool(
    name="zoom_image",
    kind="zoom",
    description=("Show one region of the current image at full resolution. Use it instead of resize_image when "
                 "the critical information is small and lies in one region."),
    parameters={
        "type": "object",
        "properties": {"box": {
            "type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
            "description": "[x1, y1, x2, y2]: left, top, right, bottom, in pixels of the current image."}},
        "required": ["box"],
    },
    response_text="Region at full resolution. Think in <think> </think>, then answer in <answer> </answer>.",
)
