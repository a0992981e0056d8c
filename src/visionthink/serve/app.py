"""An OpenAI-compatible server that applies VisionThink, and a web page on the same server.

Endpoints:

- `POST /v1/chat/completions`, in one of two modes:
  - **VisionThink** (the default): the server runs the whole protocol. The image is the first
    `image_url` of the user's messages, the question is the text of the last user message
    (the client's system prompt and earlier turns are not used: the protocol has its own).
    The model sees the low-resolution view first; if it calls `resize_image`, the server
    answers the call with the full-resolution view and the model answers. The reply's
    `content` is the final answer (the raw last turn when the model gave no `<answer>`),
    `reasoning_content` the `<think>` text, `choices[0].message.resized` and
    `visionthink.resized` whether it asked for full resolution, and `usage` adds
    `visual_tokens` and `full_res_visual_tokens`. `visionthink_mode` picks `visionthink`
    (default), `low` or `full`; `visionthink_return_image: true` adds the low-res view the
    model saw as a data URL (`visionthink.low_res_image`).
  - **Raw** (the request carries `tools`, or `visionthink_mode: "raw"`): the server is a plain
    VLM, for clients that run the tool loop themselves (`visionthink.engines.remote`). The given
    messages and tools are rendered with the model's chat template and one assistant turn is
    generated. `<tool_call>` blocks come back OpenAI-style in `tool_calls` (finish_reason
    `tool_calls`) with the text before them as `content`; `tool_choice: "none"` forbids them.
    Images may appear in user and tool messages.
- `stream: true` sends the same reply as server-sent events (`data: {chunk}` ... `data: [DONE]`);
  the episode is computed first, so the concatenated deltas equal the non-streaming reply.
- `GET /v1/models`, `GET /health`, and `GET /` (the web page).

Limits: body size, pixels per image (checked before decoding), images per request, a
per-request timeout, an optional Bearer key on `/v1/*`, and a queue bound. Images come as
`data:image/...;base64,` URLs; `http(s)` URLs are refused unless `allow_remote_images`, and
even then only public addresses are fetched (no redirects, size-capped, the resolved
address pinned for the connection). Every refusal is a 4xx with an OpenAI-style body
`{"error": {"message", "type", "code", "param"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionthink import protocol
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.engines.transformers_engine import Request as EngineRequest
from visionthink.engines.transformers_engine import TransformersEngine
from visionthink.errors import VisionThinkError
from visionthink.images import DEFAULT_MAX_INPUT_PIXELS, load_image
from visionthink.serve.batcher import Batcher, BatchKey, ModelWorker, QueueFull, RawJob, RawResult, VisionThinkJob

SERVED_MODES = ("visionthink", "low", "full", "raw")


@dataclass
class ServeConfig:
    """Server settings (the `visionthink serve` flags)."""

    model_name: str = "visionthink"
    api_key: str | None = None
    allow_remote_images: bool = False
    allow_private_remote_images: bool = False
    """Let remote fetching reach loopback/private addresses (tests only: this is what SSRF needs)."""
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_images: int = 8
    timeout: float = 60.0
    """Seconds for one request, from reading its body to its reply."""
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_queue: int = 1024
    max_new_tokens: int = 512
    """Upper bound for a request's `max_tokens` (per assistant turn)."""
    max_text_chars: int = 100_000
    """Text in all messages and tools together (bounds the prompt a request can make the model read)."""
    remote_fetch_timeout: float = 10.0
    decode_concurrency: int = 4


class ApiError(Exception):
    """A refusal, sent as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(error_body(self.message, self.kind, self.code, self.param), self.status, headers=headers)


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


# ---------------------------------------------------------------- body size (pure ASGI)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, before they are buffered."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _send_error(send, ApiError(400, "Content-Length is not a number", "invalid_header"))
            if length > self.max_bytes:
                return await _send_error(send, self._too_large())
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, self._too_large())

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is over the limit of {self.max_bytes} bytes", "body_too_large")


class _BodyTooLarge(Exception):
    pass


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error_body(error.message, error.kind, error.code, error.param)).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- images


_DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),", re.S)


def image_bytes_from_url(url: str, config: ServeConfig) -> bytes:
    """The bytes behind an `image_url`: a base64 data URL, or (when allowed) a fetched http(s) URL."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a non-empty string", "invalid_image_url")
    head = url[:8].lower()
    if head.startswith("data:"):
        match = _DATA_URL.match(url[:512])
        if match is None:
            raise ApiError(400, "malformed data URL (expected data:image/<type>;base64,<data>)", "invalid_image_url")
        media = match["media"].strip().lower()
        if not media.startswith("image/"):
            raise ApiError(400, f"data URL has media type {media[:60] or 'none'!r}; expected an image/* type",
                           "invalid_image")
        if "base64" not in match["params"].lower():
            raise ApiError(400, "image data URLs must be base64-encoded (data:image/...;base64,...)",
                           "invalid_image_url")
        payload = url[match.end():]
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image data URL holds invalid base64", "invalid_image") from None
        if not data:
            raise ApiError(400, "image data URL is empty", "invalid_image")
        return data
    if head.startswith(("http://", "https://")):
        if not config.allow_remote_images:
            raise ApiError(400, "remote image URLs are disabled on this server; send the image as a data URL "
                           "(data:image/png;base64,...)", "remote_images_disabled")
        return fetch_remote_image(url, config)
    scheme = url.split(":", 1)[0][:20] if ":" in url else ""
    raise ApiError(400, f"unsupported image URL scheme {scheme!r}; use a data:image/...;base64 URL",
                   "invalid_image_url")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address resolved (and checked) beforehand."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_remote_image(url: str, config: ServeConfig) -> bytes:
    """GET an image over http(s): public addresses only (unless configured), no redirects, size-capped."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise ApiError(400, "remote image URL has no host", "invalid_image_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise ApiError(400, f"cannot resolve the image host: {error}", "remote_image_failed") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global and not config.allow_private_remote_images:
            raise ApiError(400, "remote image host resolves to a non-public address; refused", "remote_image_refused")
    connection_type = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(host, port, addresses[0], config.remote_fetch_timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    limit = config.max_body_bytes
    try:
        connection.request("GET", target, headers={"User-Agent": "visionthink-server", "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            raise ApiError(400, f"fetching the remote image gave HTTP {response.status} (redirects are not "
                           "followed)", "remote_image_failed")
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(400, f"remote image is over the limit of {limit} bytes", "image_too_large")
        data = response.read(limit + 1)
    except (OSError, http.client.HTTPException) as error:
        raise ApiError(400, f"fetching the remote image failed: {type(error).__name__}: {error}",
                       "remote_image_failed") from None
    finally:
        connection.close()
    if len(data) > limit:
        raise ApiError(400, f"remote image is over the limit of {limit} bytes", "image_too_large")
    return data


def decode_image(url: str, config: ServeConfig) -> Image.Image:
    """An RGB image from an `image_url`, refusing non-images and decompression bombs."""
    data = image_bytes_from_url(url, config)
    try:
        return load_image(data, max_input_pixels=config.max_image_pixels)
    except VisionThinkError as error:
        raise ApiError(400, str(error), "invalid_image") from None


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------- requests


@dataclass
class ChatRequest:
    """A validated chat completion request (images still as URLs)."""

    mode: str
    messages: list[dict[str, Any]]
    stream: bool
    sampling: SamplingConfig
    tools: list[dict] | None = None
    ban_tool_calls: bool = False
    return_image: bool = False
    include_usage_chunk: bool = False
    image_url: str | None = None
    """VisionThink modes: the user's first image."""
    question: str = ""
    image_count: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> BatchKey:
        return BatchKey(self.mode, tuple(sorted(asdict(self.sampling).items())))


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ApiError(400, f"request body is not valid JSON ({error})", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    return body


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a list of validated parts (`text` and `image_url`)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", "invalid_message", param=where)
    parts = []
    for index, part in enumerate(content):
        name = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{name} must be an object", "invalid_message", param=name)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{name}.text must be a string", "invalid_message", param=name)
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise ApiError(400, f"{name}.image_url.url must be a string", "invalid_image_url", param=name)
            parts.append({"type": "image_url", "url": url})
        else:
            raise ApiError(400, f"{name}: unsupported content part type {str(kind)[:40]!r} (text and image_url "
                           "are supported)", "unsupported_content", param=name)
    return parts


def _text_of(parts: list[dict[str, Any]]) -> str:
    return "".join(part["text"] for part in parts if part["type"] == "text")


def _sampling(body: dict[str, Any], default: SamplingConfig, config: ServeConfig) -> SamplingConfig:
    sampling = SamplingConfig(**asdict(default))
    sampling.seed = None
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ApiError(400, "max_tokens must be a positive integer", "invalid_parameter", param="max_tokens")
        sampling.max_new_tokens = min(limit, config.max_new_tokens)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise ApiError(400, "temperature must be a number in [0, 2]", "invalid_parameter", param="temperature")
        sampling.do_sample = temperature > 0
        sampling.temperature = float(temperature) if temperature > 0 else 1.0
    top_p = body.get("top_p")
    if top_p is not None:
        if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
            raise ApiError(400, "top_p must be a number in (0, 1]", "invalid_parameter", param="top_p")
        sampling.top_p = float(top_p)
    return sampling


def parse_chat_request(body: dict[str, Any], config: ServeConfig, default_sampling: SamplingConfig) -> ChatRequest:
    """Validate a chat completion request; images are counted and located, not decoded."""
    model = body.get("model")
    if model is not None and model != config.model_name:
        raise ApiError(404, f"model {str(model)[:80]!r} is not served here; this server serves "
                       f"{config.model_name!r}", "model_not_found", param="model")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "unsupported_parameter", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "invalid_parameter", param="stream")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools)):
        raise ApiError(400, "tools must be a list of {type: function, function: {name, ...}} objects",
                       "invalid_parameter", param="tools")
    mode = body.get("visionthink_mode")
    if mode is None:
        mode = "raw" if tools else "visionthink"
    if mode not in SERVED_MODES:
        raise ApiError(400, f"visionthink_mode must be one of {', '.join(SERVED_MODES)}", "invalid_parameter",
                       param="visionthink_mode")
    if tools and mode != "raw":
        raise ApiError(400, "a request with tools is answered in raw mode (the client runs the tool loop); drop "
                       "visionthink_mode or set it to 'raw'", "invalid_parameter", param="tools")
    tool_choice = body.get("tool_choice", "auto")
    if tool_choice not in ("auto", "none", None):
        raise ApiError(400, "tool_choice must be 'auto' or 'none'", "unsupported_parameter", param="tool_choice")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "invalid_message", param="messages")
    stream_options = body.get("stream_options") or {}
    request = ChatRequest(
        mode=mode,
        messages=[],
        stream=stream,
        sampling=_sampling(body, default_sampling, config),
        tools=tools or None,
        ban_tool_calls=tool_choice == "none",
        return_image=bool(body.get("visionthink_return_image", False)),
        include_usage_chunk=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
    )
    last_user_text = None
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", "invalid_message", param=where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool", "invalid_message",
                           param=where)
        parts = _parts(message.get("content"), where)
        images = [part for part in parts if part["type"] == "image_url"]
        request.image_count += len(images)
        if request.image_count > config.max_images:
            raise ApiError(400, f"too many images: at most {config.max_images} per request", "too_many_images",
                           param="messages")
        if role == "user":
            last_user_text = _text_of(parts)
            if images and request.image_url is None:
                request.image_url = images[0]["url"]
        converted: dict[str, Any] = {"role": role, "content": parts}
        if role == "assistant" and message.get("tool_calls"):
            converted["tool_calls"] = _tool_calls(message["tool_calls"], where)
        request.messages.append(converted)
    text_chars = sum(len(part["text"]) for m in request.messages for part in m["content"] if part["type"] == "text")
    text_chars += len(json.dumps(tools)) if tools else 0
    if text_chars > config.max_text_chars:
        raise ApiError(400, f"too much text: {text_chars} characters, the limit is {config.max_text_chars}",
                       "text_too_long", param="messages")
    if mode != "raw":
        if request.image_url is None:
            raise ApiError(400, "a VisionThink request needs an image: add an image_url part to a user message",
                           "missing_image", param="messages")
        if not last_user_text or not last_user_text.strip():
            raise ApiError(400, "the last user message has no question text", "missing_question", param="messages")
        request.question = last_user_text.strip()
    return request


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ApiError(400, f"{where}.tool_calls must be a list", "invalid_message", param=where)
    checked = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(400, f"{where}.tool_calls entries need function.name", "invalid_message", param=where)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, (str, dict)):
            raise ApiError(400, f"{where}.tool_calls function.arguments must be a JSON string", "invalid_message",
                           param=where)
        checked.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return checked


# ---------------------------------------------------------------- replies

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def split_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a raw assistant turn, OpenAI-style.

    Content is the text before the first `<tool_call>` (whitespace kept, so the turn can be
    rebuilt exactly); a block that is not `{"name": ..., "arguments": {...}}` JSON leaves the
    whole text as content and no tool calls.
    """
    blocks = _TOOL_CALL_BLOCK.findall(text)
    if not blocks:
        return text, []
    calls = []
    for block in blocks:
        try:
            payload = json.loads(block.strip())
        except (json.JSONDecodeError, RecursionError):
            return text, []
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return text, []
        arguments = payload.get("arguments", payload.get("parameters", {}))
        calls.append({
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": payload["name"],
                         "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
        })
    content = text[: text.index("<tool_call>")]
    return (content if content.strip() else None), calls


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


def visionthink_reply(episode: protocol.Episode, chat: ChatRequest) -> Reply:
    turns = [protocol.assistant_text(m) for m in episode.messages if m["role"] == "assistant"]
    reasoning = "\n".join(t.think for t in episode.turns if t.think)
    content = episode.answer if episode.answer is not None else (turns[-1] if turns else "")
    first_image = protocol.images_in(episode.messages)[0]
    info: dict[str, Any] = {
        "mode": episode.mode,
        "resized": episode.resized,
        "answer": episode.answer,
        "reasoning": [t.think for t in episode.turns],
        "turns": turns,
        "visual_tokens_per_turn": episode.visual_tokens_per_turn,
        "well_formed": episode.well_formed,
        "first_image_size": list(first_image.size),
    }
    if chat.return_image:
        info["low_res_image"] = image_data_url(first_image)
    usage = {
        "prompt_tokens": episode.prompt_tokens,
        "completion_tokens": episode.generated_tokens,
        "total_tokens": episode.prompt_tokens + episode.generated_tokens,
        "visual_tokens": episode.visual_tokens,
        "full_res_visual_tokens": episode.full_res_visual_tokens,
    }
    return Reply(content, reasoning or None, [], "stop", usage, {"resized": episode.resized}, {"visionthink": info})


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
    return Reply(content, None, calls, finish, usage)


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
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
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


# ---------------------------------------------------------------- the app


def _page() -> str:
    return resources.files("visionthink.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(engine: TransformersEngine, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving `engine` (its batch size is raised to `config.max_batch`)."""
    config = config or ServeConfig()
    engine.batch_size = max(engine.batch_size, config.max_batch)
    worker = ModelWorker(engine)
    batcher = Batcher(worker, max_batch=config.max_batch, wait_ms=config.batch_wait_ms, max_queue=config.max_queue)
    decoding = asyncio.Semaphore(config.decode_concurrency)
    page = _page()
    started = time.time()
    counters = {"requests": 0, "refused": 0, "timeouts": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="VisionThink", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.batcher = batcher
    app.state.engine = engine
    app.state.counters = counters

    @app.exception_handler(ApiError)
    async def on_api_error(_request, error: ApiError):
        counters["refused"] += 1
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request, error: StarletteHTTPException):
        kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
        kind, code = kinds.get(error.status_code, ("invalid_request_error", "http_error"))
        return JSONResponse(error_body(str(error.detail), kind, code), error.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request, error: RequestValidationError):
        return JSONResponse(error_body(f"invalid request: {error.errors()[:3]}", "invalid_request_error",
                                       "invalid_request"), 400)

    def check_key(request: HttpRequest) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                           "authentication_error")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "invalid API key", "invalid_api_key", "authentication_error")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "uptime_s": round(time.time() - started, 1),
                "waiting": batcher.waiting, **counters, "batching": batcher.stats.as_dict()}

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": int(started),
                                             "owned_by": "visionthink"}]}

    async def decode(url: str) -> Image.Image:
        async with decoding:
            return await asyncio.to_thread(decode_image, url, config)

    async def answer(chat: ChatRequest) -> Reply:
        if chat.mode == "raw":
            messages = []
            for message in chat.messages:
                content = []
                for part in message["content"]:
                    if part["type"] == "image_url":
                        content.append(protocol.image_part(await decode(part["url"])))
                    else:
                        content.append(part)
                messages.append({**message, "content": content})
            job = RawJob(messages, chat.tools, chat.ban_tool_calls)
            return raw_reply(await batcher.submit(chat.key, job), chat)
        image = await decode(chat.image_url)
        try:
            engine.processor.grid.snap(*image.size)
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_image") from None
        episode = await batcher.submit(chat.key, VisionThinkJob(EngineRequest(image, chat.question)))
        return visionthink_reply(episode, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        check_key(request)
        counters["requests"] += 1
        try:
            async with asyncio.timeout(config.timeout):
                body = parse_json_body(await request.body())
                chat = parse_chat_request(body, config, worker.default_sampling)
                reply = await answer(chat)
        except TimeoutError:
            counters["timeouts"] += 1
            raise ApiError(408, f"request took longer than the server's limit of {config.timeout:g} s",
                           "request_timeout", "timeout_error") from None
        except QueueFull as error:
            raise ApiError(429, f"server is busy ({error}); retry later", "server_busy", "rate_limit_error") from None
        except VisionThinkError as error:
            raise ApiError(400, str(error), "invalid_request") from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return StreamingResponse(
                completion_chunks(reply, config.model_name, completion_id, created, chat.include_usage_chunk),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(completion_json(reply, config.model_name, completion_id, created))

    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    return app


def serve(model_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000,
          config: ServeConfig | None = None, log_level: str = "info") -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    config = config or ServeConfig()
    engine = TransformersEngine.from_pretrained(model_dir, batch_size=config.max_batch)
    uvicorn.run(create_app(engine, config), host=host, port=port, log_level=log_level, access_log=False)


class BackgroundServer:
    """Serve an app from a thread on a free loopback port (tests, notebooks, benchmarks).

    `with BackgroundServer(app) as server: ... server.url ...`
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.host = host
        self.startup_timeout = startup_timeout
        self.thread = None
        self.url = ""

    def start(self) -> BackgroundServer:
        import threading

        self.thread = threading.Thread(target=self.server.run, name="visionthink-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
