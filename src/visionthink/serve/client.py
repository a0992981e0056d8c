"""`visionthink ask --server URL`: one question to a running `visionthink serve`, from the standard library alone.

The episode runs in the server, which keeps its model loaded, so the asking process imports neither torch nor
transformers (a local `ask` spends ~5 s importing them). The image file travels as a base64 data URL, untouched;
the server checks and decodes it with its own limits.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from visionthink.errors import VisionThinkError


def ask_server(url: str, image_path: str, question: str, mode: str | None = None, api_key: str | None = None,
               max_new_tokens: int | None = None, timeout: float = 300.0,
               tool_threshold: float | None = None, escalate_below: float | None = None) -> dict[str, Any]:
    """The server's episode for one image and question, as `ask --json` prints a local one (`seconds` excepted).
    `mode` is sent as `visionthink_mode` (None: the server's default, the served model's own mode); `tool_threshold`
    as `visionthink_tool_threshold`, `escalate_below` as `visionthink_escalate_below` (None: the server's default)."""
    try:
        data = Path(image_path).read_bytes()
    except OSError as error:
        raise VisionThinkError(f"cannot read image {image_path}: {error.strerror or error}") from None
    media = mimetypes.guess_type(image_path)[0] or ""
    media = media if media.startswith("image/") else "image/png"  # the server decodes whatever the bytes are
    content = [{"type": "image_url", "image_url": {"url": f"data:{media};base64,{base64.b64encode(data).decode()}"}},
               {"type": "text", "text": question}]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    if mode is not None:
        body["visionthink_mode"] = mode
    if max_new_tokens is not None:
        body["max_tokens"] = max_new_tokens
    if tool_threshold is not None:
        body["visionthink_tool_threshold"] = tool_threshold
    if escalate_below is not None:
        body["visionthink_escalate_below"] = escalate_below
    reply = _post(url.rstrip("/") + "/v1/chat/completions", body, api_key, timeout)
    try:
        info, usage = reply["visionthink"], reply["usage"]
        answer = info["answer"]
        return {
            "answer": answer,
            "resized": info["resized"],
            "action": info["action"],
            "visual_tokens": usage["visual_tokens"],
            "full_res_visual_tokens": usage["full_res_visual_tokens"],
            "turns": info["turns"],
            "zoom_box": info.get("zoom_box"),
            "p_tool": info.get("p_tool"),
            "tool_threshold": info.get("tool_threshold"),
            "answer_confidence": info.get("answer_confidence"),
            "escalate_below": info.get("escalate_below"),
            "escalated": info.get("escalated", False),
            "error": None if answer and answer.strip() else "the server's episode ended without an answer",
        }
    except (KeyError, TypeError):
        raise VisionThinkError(f"{url} did not answer as a visionthink server does (no `visionthink` episode "
                               "in its reply)") from None


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise VisionThinkError(f"the server refused the request ({error.code}): {_message(error)}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise VisionThinkError(f"cannot reach the server at {url}: {reason}") from None
    except json.JSONDecodeError:
        raise VisionThinkError(f"{url} did not reply with JSON") from None


def _message(error: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the HTTP reason."""
    try:
        return json.loads(error.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)
