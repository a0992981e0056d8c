"""The modes an episode runs in, as values: which view comes first, which tools the model is offered, and who
decides whether one is called. CLI choices, the server's and eval's all come from `MODES`.

- `full`: one turn on the full-resolution view, no call.
- `low`: one turn on the low-resolution view, no call.
- `visionthink`: low view first; the model decides whether to call `resize_image`.
- `oracle`: low view first; `resize_image` exactly when the item needs high resolution (`needs_high_res`).
- `zoom`: low view first; the model answers, calls `resize_image` or `zoom_image` on a box.
- `oracle-zoom`: low view first; `zoom_image` on the request's true `box` exactly when the item needs high
  resolution, else an answer.
- `oracle-ladder`: low view first; each item's `right_action` (issue 27): an answer, `zoom_image` on the true
  `box`, or `resize_image`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Mode:
    """One way to run an episode."""

    name: str
    help: str
    first_view: Literal["low", "high"] = "low"
    tools: tuple[str, ...] = ("resize_image",)
    """The tools the prompt offers: the model's profile restricted to them (`profiles.with_tools`)."""
    calls: Literal["never", "model", "oracle"] = "model"
    """Who decides on a call: nobody (the call is banned), the model, or the oracle (on `needs_high_res`)."""
    oracle_tool: str | None = None
    """The tool the oracle calls on an item that needs high resolution."""
    oracle_label: Literal["needs_high_res", "right_action"] = "needs_high_res"
    """What the oracle reads off each request: `needs_high_res` (then it calls `oracle_tool`), or `right_action`
    (then it takes that action: an answer, or the tool of that kind)."""

    @property
    def decides(self) -> bool:
        """The model's own decision stands (a tool threshold can steer it)."""
        return self.calls == "model"

    @property
    def needs_box(self) -> bool:
        """Whether requests may need the true `box` of their answer (an oracle tool is aimed with it)."""
        from visionthink.tools import TOOLS

        tools = self.tools if self.oracle_label == "right_action" else (self.oracle_tool,)
        return self.calls == "oracle" and any(TOOLS[name].oracle_needs_box for name in tools if name)

    def oracle_tool_for(self, request) -> str | None:
        """The tool the oracle calls for `request` (an object with `needs_high_res` / `right_action`), or None."""
        if self.calls != "oracle":
            return None
        if self.oracle_label == "right_action":
            from visionthink.tools import TOOLS

            action = getattr(request, "right_action", None)
            return next((name for name in self.tools if TOOLS[name].kind == action), None)
        return self.oracle_tool if getattr(request, "needs_high_res", None) else None

    def forbids_call(self, request, turn_index: int) -> bool:
        """Whether this turn of `request` may not call a tool."""
        if self.calls == "never":
            return True
        return self.calls == "oracle" and turn_index == 0 and self.oracle_tool_for(request) is None

    def oracle_calls(self, request, turn_index: int) -> str | None:
        """The tool the oracle calls in this turn of `request`, or None."""
        return self.oracle_tool_for(request) if turn_index == 0 else None


ZOOM_TOOLS = ("resize_image", "zoom_image")
MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("full", "one turn on the full-resolution view", first_view="high", calls="never"),
    Mode("low", "one turn on the low-resolution view", calls="never"),
    Mode("visionthink", "low-res first, the model may call resize_image"),
    Mode("oracle", "low-res first, resize_image exactly when the item needs it", calls="oracle",
         oracle_tool="resize_image"),
    Mode("zoom", "low-res first, the model may call resize_image or zoom_image", tools=ZOOM_TOOLS),
    Mode("oracle-zoom", "low-res first, zoom_image on the true box exactly when the item needs it", tools=ZOOM_TOOLS,
         calls="oracle", oracle_tool="zoom_image"),
    Mode("oracle-ladder", "low-res first, each item's right action: answer, zoom_image on the true box, or "
         "resize_image", tools=ZOOM_TOOLS, calls="oracle", oracle_label="right_action"),
)}
PAPER_MODES = ("full", "low", "visionthink", "oracle")
"""The paper's modes (what `demo` and `eval` run by default)."""


def own_mode(profile) -> str:
    """The mode in which a model trained under `profile` decides with every tool it offers: `zoom` for
    visionthink-zoom (answer, zoom or resize), `visionthink` for visionthink and release. What `ask` and a server
    run when no mode is asked for."""
    deciding = [mode for mode in MODES.values() if mode.decides and not profile.lacks(mode.tools)]
    return max(deciding, key=lambda mode: len(mode.tools)).name


def get_mode(name: str | Mode) -> Mode:
    """A mode by name (a mode passes through); a ValueError naming the choices for another."""
    if isinstance(name, Mode):
        return name
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; expected one of {', '.join(MODES)}")
    return MODES[name]
