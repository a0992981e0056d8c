"""Run VisionThink episodes against any OpenAI-compatible VLM server, the protocol applied on our side.

`RemoteEngine(base_url, model, api_key).run(requests, mode)` returns the same
`protocol.Episode`s as `TransformersEngine.run`. For each request it makes the two views
locally, sends the system prompt and the user turn with the low-res image (a PNG data URL)
and the `resize_image` tool in `tools`, and parses the reply with `protocol.parse_turn`.
When the model calls the tool, it sends the whole conversation again with a `tool` message
holding the full-resolution image, and the model answers.

The server only has to be a plain VLM that renders messages with the model's chat template:
vLLM serving Qwen2.5-VL (`--enable-auto-tool-choice --tool-call-parser hermes`, or no parser:
inline `<tool_call>` text is understood as well), or this project's server, which does this
for requests that carry `tools` (its raw mode). Requests run concurrently (`max_workers`),
so a batching server batches them.

Details that keep the remote rendering identical to the local one:
- the assistant turn goes back as the text the model wrote (`assistant_tool_calls="inline"`,
  default; tool calls stay inline as `<tool_call>` blocks). Servers that insist on OpenAI's
  structured form get `assistant_tool_calls="structured"`: `content` plus `tool_calls`.
- the high-res image travels in a `tool` message, as in the protocol (OpenAI's own API does
  not accept images in tool messages; vLLM and this project's server do).
- in `low` and `full` modes, and in the oracle's first turn of items that need no resize,
  `tool_choice: "none"` keeps the call out, like the local engine's banned token.
Visual-token counts come from the pixel grid (`grid`, Qwen2.5-VL's by default; pass the
served processor's grid for other models).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from PIL import Image

from visionthink import protocol
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import VisionThinkError
from visionthink.images import PixelGrid, load_image, make_views

MODES = ("full", "low", "visionthink", "oracle")


class RemoteEngineError(VisionThinkError):
    """The server refused a request or could not be reached."""


class RemoteEngine:
    """Episodes on a model behind an OpenAI-compatible `/v1/chat/completions`."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 sampling: SamplingConfig | None = None, grid: PixelGrid | None = None, timeout: float = 120.0,
                 max_workers: int = 8, assistant_tool_calls: str = "inline"):
        if assistant_tool_calls not in ("inline", "structured"):
            raise ValueError("assistant_tool_calls must be 'inline' or 'structured'")
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.api_key = api_key
        self.sampling = sampling or SamplingConfig()
        self.grid = grid or PixelGrid()
        self.timeout = timeout
        self.max_workers = max_workers
        self.assistant_tool_calls = assistant_tool_calls
        self._model = model

    # ------------------------------------------------------------ HTTP

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:2000].decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise RemoteEngineError(f"{self.base_url}{path}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RemoteEngineError(f"{self.base_url}{path}: {error}") from None

    @property
    def model(self) -> str:
        """The served model's id (asked from `/v1/models` when not given)."""
        if self._model is None:
            listing = self._call("GET", "/v1/models")
            try:
                self._model = listing["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise RemoteEngineError(f"{self.base_url}/v1/models lists no model") from None
        return self._model

    # ------------------------------------------------------------ episodes

    def run(self, requests: list, mode: str = "visionthink", progress=None) -> list[protocol.Episode]:
        """Episodes for all requests (any objects with `image`, `question`, `needs_high_res`), in order."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        model = self.model
        workers = max(1, min(self.max_workers, len(requests)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="visionthink-remote") as pool:
            futures = [pool.submit(self._episode, request, mode, model) for request in requests]
            episodes = []
            for future in futures:
                episodes.append(future.result())
                if progress is not None:
                    progress.update(1)
        return episodes

    def _episode(self, request, mode: str, model: str) -> protocol.Episode:
        began = time.perf_counter()
        needs_high_res = getattr(request, "needs_high_res", None)
        if mode == "oracle" and needs_high_res is None:
            raise ValueError("oracle mode needs `needs_high_res` on every request")
        views = make_views(load_image(request.image), self.grid)
        first_image = views.high if mode == "full" else views.low
        messages = protocol.first_turn(request.question, first_image)
        visual = [self.grid.tokens(*first_image.size)]
        seconds = {"prepare": time.perf_counter() - began}
        turns: list[protocol.Turn] = []
        generated = 0
        last_usage: dict[str, Any] = {}
        urls: dict[int, str] = {}
        for turn_index in range(protocol.MAX_ASSISTANT_TURNS):
            turn_began = time.perf_counter()
            forbid_call = mode in ("full", "low") or (mode == "oracle" and turn_index == 0 and not needs_high_res)
            reply = self._call("POST", "/v1/chat/completions", self._body(model, messages, urls, forbid_call))
            seconds[f"turn{turn_index + 1}"] = time.perf_counter() - turn_began
            text = reply_text(reply)
            last_usage = reply.get("usage") or {}
            generated += int(last_usage.get("completion_tokens") or 0)
            turn = protocol.parse_turn(text)
            if mode == "oracle" and turn_index == 0 and needs_high_res and turn.kind != "resize":
                text = protocol.resize_text(turn.think or "")
                turn = protocol.parse_turn(text)
            messages.append(protocol.assistant_turn(text))
            turns.append(turn)
            if turn_index + 1 == protocol.MAX_ASSISTANT_TURNS or mode in ("full", "low") or turn.kind == "answer":
                break
            if turn.kind == "resize":
                messages.append(protocol.tool_turn(views.high))
                visual.append(self.grid.tokens(*views.high.size))
            elif "<tool_call>" in text:
                messages.append(protocol.error_turn(turn.error or "malformed tool call"))
            else:
                break
        resized = any(t.kind == "resize" for t in turns)
        final = turns[-1]
        total = int(last_usage.get("prompt_tokens") or 0) + int(last_usage.get("completion_tokens") or 0)
        return protocol.Episode(
            messages=messages,
            answer=final.answer if final.kind == "answer" else None,
            resized=resized,
            turns=turns,
            visual_tokens_per_turn=visual,
            full_res_visual_tokens=self.grid.tokens(*views.high.size),
            prompt_tokens=max(0, total - generated),
            generated_tokens=generated,
            seconds=seconds,
            mode=mode,
        )

    def _body(self, model: str, messages: list[protocol.Message], urls: dict[int, str],
              forbid_call: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": self.openai_messages(messages, urls),
            "tools": [protocol.RESIZE_TOOL],
            "tool_choice": "none" if forbid_call else "auto",
            "max_tokens": self.sampling.max_new_tokens,
            "stream": False,
        }
        if self.sampling.do_sample:
            body["temperature"] = self.sampling.temperature
            body["top_p"] = self.sampling.top_p
            if self.sampling.seed is not None:
                body["seed"] = self.sampling.seed
        else:
            body["temperature"] = 0
        return body

    def openai_messages(self, messages: list[protocol.Message], urls: dict[int, str] | None = None) -> list[dict]:
        """A protocol conversation in OpenAI's chat format (images as PNG data URLs, encoded once)."""
        urls = {} if urls is None else urls
        out: list[dict[str, Any]] = []
        call_id = None
        for message in messages:
            role = message["role"]
            if role in ("system", "assistant"):
                text = protocol.assistant_text(message)
                if role == "assistant" and "<tool_call>" in text:
                    call_id = f"call_{uuid.uuid4().hex[:24]}"
                    if self.assistant_tool_calls == "structured":
                        out.append(_structured_call(text, call_id))
                        continue
                out.append({"role": role, "content": text})
                continue
            parts = []
            for part in message["content"]:
                if part["type"] == "image":
                    key = id(part["image"])
                    if key not in urls:
                        urls[key] = png_data_url(part["image"])
                    parts.append({"type": "image_url", "image_url": {"url": urls[key]}})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            if role == "tool":
                out.append({"role": "tool", "tool_call_id": call_id or "call_0", "content": parts})
            else:
                out.append({"role": role, "content": parts})
        return out


def _structured_call(text: str, call_id: str) -> dict[str, Any]:
    start = text.index("<tool_call>")
    end = text.find("</tool_call>", start)
    payload = text[start + len("<tool_call>"): end if end >= 0 else len(text)]
    try:
        call = json.loads(payload)
        name, arguments = call["name"], call.get("arguments", {})
    except (ValueError, KeyError, TypeError):
        return {"role": "assistant", "content": text}
    return {
        "role": "assistant",
        "content": text[:start].rstrip() or None,
        "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}],
    }


def reply_text(reply: dict[str, Any]) -> str:
    """The assistant turn's text, with structured tool calls written back as inline `<tool_call>` blocks."""
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise RemoteEngineError(f"malformed chat completion: {str(reply)[:200]}") from None
    text = message.get("content") or ""
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments", "{}")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            pass
        block = json.dumps({"name": function.get("name"), "arguments": arguments})
        if text and not text[-1].isspace():
            text += "\n"
        text += f"<tool_call>\n{block}\n</tool_call>"
    return text


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
