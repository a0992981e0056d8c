"""A tool the model may call: its name, the schema it is shown, how its arguments are checked, what it returns.

A tool is one unit: a profile offers a tuple of them (`profiles`), the parser checks a call's arguments with its
tool (`protocol.parse_turn`), the loop runs it on the request's views (`Tool.image`) and the GRPO environment and
the SFT conversations are generated from the same objects. A new tool is a module with a `Tool` subclass and its
registration in `tools.TOOLS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from visionthink.images import PixelGrid, Views


@dataclass(frozen=True)
class Tool:
    """One tool. Subclasses say how arguments are checked and what image a call returns."""

    name: str
    kind: str
    """What a turn that calls it is (`protocol.Turn.kind`): "resize", "zoom"."""
    description: str
    parameters: dict[str, Any]
    """The JSON schema of the arguments, as the model is shown it."""
    response_text: str
    """The text after the image in the tool's turn."""
    fixed_arguments: dict[str, Any] | None = None
    """The arguments of every canonical call, where they never vary (the engine guesses the call's text from them)."""
    shown_as: dict[str, Any] | None = None
    """The schema exactly as a prompt shows it, where it is not the one built from the fields (the release's)."""

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function schema the chat template renders."""
        if self.shown_as is not None:
            return self.shown_as
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    returns_full_view = False
    """Whether every call returns the whole full-resolution view (a class attribute)."""
    oracle_needs_box = False
    """Whether an oracle call needs the request's true `box` (a class attribute)."""

    def check(self, arguments: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """`(arguments the call runs with, None)`, or `(None, why the call cannot run)`."""
        raise NotImplementedError

    def exact(self, arguments: dict[str, Any]) -> bool:
        """The paper's format check of the arguments: those the schema requires, and no others."""
        required = set(self.parameters.get("required", ()))
        return required <= set(arguments) <= set(self.parameters.get("properties", {}))

    def check_in_view(self, arguments: dict[str, Any], views: Views) -> str | None:
        """Why checked arguments cannot run on these views (None: they can)."""
        return None

    def image(self, arguments: dict[str, Any], views: Views, grid: PixelGrid) -> Image.Image:
        """The image a call with checked arguments returns."""
        raise NotImplementedError

    def visual_tokens(self, arguments: dict[str, Any], views: Views, grid: PixelGrid) -> int:
        """What the call's image costs in visual tokens."""
        return grid.tokens(*self.image(arguments, views, grid).size)

    def oracle_arguments(self, request, views: Views, source_size: tuple[int, int]) -> dict[str, Any]:
        """The arguments an oracle calls it with for a request that needs high resolution."""
        raise NotImplementedError

    def widest_arguments(self, low_size: tuple[int, int]) -> dict[str, Any]:
        """Arguments whose call returns the largest image this tool can (for context budgets)."""
        return dict(self.fixed_arguments or {})

    def canonical(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the project's own turns write them."""
        return dict(arguments)
