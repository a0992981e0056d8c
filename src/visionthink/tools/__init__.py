"""The tools a profile can offer, by name. A new tool: its module, and one line here."""

from visionthink.tools.base import Tool
from visionthink.tools.codec import BadCall, ToolCall
from visionthink.tools.resize import RESIZE
from visionthink.tools.zoom import ZOOM

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (RESIZE, ZOOM)}

__all__ = ["RESIZE", "TOOLS", "ZOOM", "BadCall", "Tool", "ToolCall"]
