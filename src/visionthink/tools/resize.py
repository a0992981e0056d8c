"""`resize_image`: the full-resolution view (the paper's one tool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from visionthink.images import PixelGrid, Views
from visionthink.tools.base import Tool


@dataclass(frozen=True)
class ResizeTool(Tool):
    """A call runs when any `action` it gives is "resize" (a missing one or extra arguments are tolerated; the format
    check wants exactly `action`)."""

    returns_full_view = True

    def check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        action = arguments.get("action", "resize")
        if action != "resize":
            return None, f"unknown action {str(action)[:40]!r}; expected 'resize'"
        return {"action": "resize"}, None

    def exact(self, arguments: dict[str, Any]) -> bool:
        return set(arguments) == {"action"}

    def image(self, arguments: dict[str, Any], views: Views, grid: PixelGrid) -> Image.Image:
        return views.high

    def oracle_arguments(self, request, views: Views, source_size: tuple[int, int]) -> dict[str, Any]:
        return {"action": "resize"}


RESIZE = ResizeTool(
    name="resize_image",
    kind="resize",
    description=("Double the resolution of the current image. Use it only if the critical information "
                 "cannot be obtained at the current resolution."),
    parameters={
        "type": "object",
        "properties": {"action": {"type": "string", "enum": ["resize"],
                                  "description": "Always 'resize': returns the image at full resolution."}},
        "required": ["action"],
    },
    response_text="Full resolution. Think in <think> </think>, then answer in <answer> </answer>.",
    fixed_arguments={"action": "resize"},
)
