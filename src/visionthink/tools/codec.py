"""The tool-call text format, written and read in one place.

A call is Qwen2.5's (Hermes-style) block inside an assistant turn:
`<tool_call>\\n{"name": "resize_image", "arguments": {"action": "resize"}}\\n</tool_call>`. The protocol's parser, the
server's OpenAI-style `tool_calls` and the remote engine's rebuilt turns all go through these functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


@dataclass(frozen=True)
class ToolCall:
    """A call as the model wrote it: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class BadCall:
    """A block that is not a usable call: why not, and the tool's name where the JSON gave one."""

    error: str
    name: str | None = None


def call_json(name: Any, arguments: Any) -> str:
    """The call's JSON, as a block holds it."""
    return json.dumps({"name": name, "arguments": arguments})


def call_block(name: Any, arguments: Any) -> str:
    """The block of one call."""
    return f"{CALL_OPEN}\n{call_json(name, arguments)}\n{CALL_CLOSE}"


def call_blocks(text: str) -> list[str]:
    """The payload of every complete block in `text`, in order."""
    return _BLOCK.findall(text)


def without_calls(text: str) -> str:
    """`text` with its complete blocks removed."""
    return _BLOCK.sub("", text)


def _call_object(payload: str) -> dict | BadCall:
    """A block's payload parsed as a JSON object, or a `BadCall` saying why not."""
    try:
        call = json.loads(payload.strip())
    except (json.JSONDecodeError, RecursionError):
        return BadCall("tool call is not valid JSON")
    return call if isinstance(call, dict) else BadCall("tool call is not a JSON object")


def _raw_arguments(call: dict) -> Any:
    """A call's arguments as written: under `arguments`, or `parameters` as some models write them."""
    return call.get("arguments", call.get("parameters", {}))


def decode_call(payload: str) -> ToolCall | BadCall:
    """A block's payload as a `ToolCall`, or a `BadCall` saying why not. Arguments may come as `parameters` or as a
    JSON string, as models write them."""
    call = _call_object(payload)
    if isinstance(call, BadCall):
        return call
    name = call.get("name")
    name = name if isinstance(name, str) else str(name)
    arguments = _raw_arguments(call)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return BadCall("tool arguments are not valid JSON", name)
    if not isinstance(arguments, dict):
        return BadCall("tool arguments are not a JSON object", name)
    return ToolCall(name, arguments)


def openai_tool_calls(text: str, new_id) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a raw assistant turn, OpenAI-style: content is the text before the first block
    (whitespace kept, None when blank). A block that is not a call with a string name leaves the whole text as content
    and no calls. `new_id()` names each call."""
    blocks = call_blocks(text)
    if not blocks:
        return text, []
    calls = []
    for block in blocks:
        call = _call_object(block)
        if isinstance(call, BadCall) or not isinstance(call.get("name"), str):
            return text, []
        arguments = _raw_arguments(call)
        calls.append({"id": new_id(), "type": "function", "function": {
            "name": call["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    content = text[: text.index(CALL_OPEN)]
    return (content if content.strip() else None), calls
