"""Replies in OpenAI's chat completion shape: one JSON object, or server-sent event chunks."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from visionthink import protocol
from visionthink.images import PixelGrid, Views, zoom_region
from visionthink.serve.checks import ChatRequest
from visionthink.serve.worker import RawResult
from visionthink.tools import codec


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def split_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a raw assistant turn, OpenAI-style (`tools.codec.openai_tool_calls`)."""
    return codec.openai_tool_calls(text, lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass
class Reply:
    """One assistant reply, ready for the JSON or the streamed form."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, Any]
    message_extra: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None
    """OpenAI's `choices[0].logprobs.content` (raw mode, `logprobs: true`); None: not asked."""


def finish_reason(episode: protocol.Episode, stop_ids: list[int]) -> str:
    """"stop" when the last turn ended with a stop token, "length" when `max_tokens` cut it."""
    ids = episode.fed_token_ids
    return "length" if ids and ids[-1] not in stop_ids else "stop"


def visionthink_reply(episode: protocol.Episode, chat: ChatRequest, stop_ids: list[int], views: Views | None = None,
                      grid: PixelGrid | None = None) -> Reply:
    """The reply of a VisionThink episode; `views` and `grid` (needed when it zoomed) locate the crop. After a resize,
    `visionthink.high_res_image_size` is the size of the view the model got (with `return_image`, that view as
    `high_res_image`); `p_tool` is the probability the model gave the tool at its first-turn decision (None where
    not recorded) and `tool_threshold` the threshold the decision was taken with (None: greedy); `answer_confidence`
    is the first turn's answer's, `escalated` whether it was withdrawn for a resize (`escalate_below`)."""
    turns = [protocol.assistant_text(m) for m in episode.messages if m["role"] == "assistant"]
    reasoning = "\n".join(t.think for t in episode.turns if t.think)
    content = episode.answer if episode.answer is not None else (turns[-1] if turns else "")
    images = protocol.images_in(episode.messages)
    first_image = images[0]
    info: dict[str, Any] = {
        "mode": episode.mode,
        "resized": episode.resized,
        "answer": episode.answer,
        "reasoning": [t.think for t in episode.turns],
        "turns": turns,
        "visual_tokens_per_turn": episode.visual_tokens_per_turn,
        "well_formed": episode.well_formed,
        "first_image_size": list(first_image.size),
        "action": episode.action,
        "zoom_box": list(episode.zoom_box) if episode.zoomed and episode.zoom_box is not None else None,
        "p_tool": episode.p_tool,
        "tool_threshold": episode.tool_threshold,
        "answer_confidence": episode.answer_confidence,
        "escalate_below": episode.escalate_below,
        "escalated": episode.escalated,
        "visual_tokens": episode.visual_tokens,
        "full_res_visual_tokens": episode.full_res_visual_tokens,
    }
    if chat.return_image:
        info["low_res_image"] = image_data_url(first_image)
    if episode.action == "resize" and len(images) > 1:
        high = images[1]
        info["high_res_image_size"] = list(high.size)
        if chat.return_image:
            info["high_res_image"] = image_data_url(high)
    if episode.zoomed:
        info.update(zoom_info(episode, views, grid, chat.return_image))
    usage = {
        "prompt_tokens": episode.prompt_tokens,
        "completion_tokens": episode.generated_tokens,
        "total_tokens": episode.prompt_tokens + episode.generated_tokens,
        "visual_tokens": episode.visual_tokens,
        "full_res_visual_tokens": episode.full_res_visual_tokens,
    }
    return Reply(content, reasoning or None, [], finish_reason(episode, stop_ids), usage,
                 {"resized": episode.resized}, {"visionthink": info})


def zoom_info(episode: protocol.Episode, views: Views | None, grid: PixelGrid | None,
              return_image: bool) -> dict[str, Any]:
    """Where the zoom's crop lies: `zoom_region` (x1, y1, x2, y2 in the full-resolution view's pixels, the region
    the model got), that view's size, and with `return_image` the crop itself as a data URL (`zoom_image`)."""
    if views is None or grid is None or episode.zoom_box is None:
        raise ValueError("a zoom reply needs the episode's views and grid")
    info: dict[str, Any] = {"zoom_region": list(zoom_region(episode.zoom_box, views, grid)),
                            "high_res_image_size": list(views.high.size)}
    if return_image:
        info["zoom_image"] = image_data_url(protocol.images_in(episode.messages)[1])
    return info


def raw_reply(result: RawResult, chat: ChatRequest) -> Reply:
    content, calls = split_tool_calls(result.text) if chat.tools and not chat.ban_tool_calls else (result.text, [])
    finish = "tool_calls" if calls else ("stop" if result.finished else "length")
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "visual_tokens": result.visual_tokens,
        "full_res_visual_tokens": None,
    }
    logprobs = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": []}
                for piece, logprob in result.token_logprobs] if chat.logprobs else None
    return Reply(content, None, calls, finish, usage, logprobs=logprobs)


def completion_json(reply: Reply, model: str, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    message.update(reply.message_extra)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason,
                     "logprobs": None if reply.logprobs is None else {"content": reply.logprobs}}],
        "usage": reply.usage,
        **reply.extra,
    }


def _pieces(text: str) -> list[str]:
    """Text cut into word-sized deltas whose concatenation is the text."""
    return re.findall(r"\S+\s*|\s+", text)


def completion_chunks(reply: Reply, model: str, completion_id: str, created: int, usage_chunk: bool):
    """Server-sent events for a reply; the deltas concatenate to the non-streaming message."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": "", **reply.message_extra})
    for piece in _pieces(reply.reasoning or ""):
        yield chunk({"reasoning_content": piece})
    for piece in _pieces(reply.content or ""):
        yield chunk({"content": piece})
    for index, call in enumerate(reply.tool_calls):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    yield chunk({}, reply.finish_reason, usage=reply.usage, **reply.extra)
    if usage_chunk:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": reply.usage}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
