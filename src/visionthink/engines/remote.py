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
from visionthink.engines.base import Generated, run_episodes
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import VisionThinkError
from visionthink.images import PixelGrid
from visionthink.profiles import ProtocolProfile, get_profile


class RemoteEngineError(VisionThinkError):
    """The server refused a request or could not be reached."""


class RemoteEngine:
    """Episodes on a model behind an OpenAI-compatible `/v1/chat/completions`."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 sampling: SamplingConfig | None = None, grid: PixelGrid | None = None, timeout: float = 120.0,
                 max_workers: int = 8, assistant_tool_calls: str = "inline", batch_size: int = 64,
                 protocol: str | ProtocolProfile | None = None):
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
        self.batch_size = batch_size
        self.assistant_tool_calls = assistant_tool_calls
        self._model = model
        self.protocol = get_profile(protocol)
        """The conversation format. A profile whose system prompt holds the tool (`release`) is sent without `tools`
        (so `tool_choice` cannot keep a call out of a turn) and with its tool turns as user turns."""

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
        return run_episodes(self, requests, mode, progress)

    def session(self) -> _RemoteSession:
        return _RemoteSession(self, self.model)

    def _body(self, model: str, messages: list[protocol.Message], urls: dict[int, str],
              forbid_call: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": self.openai_messages(messages, urls),
            "max_tokens": self.sampling.max_new_tokens,
            "stream": False,
        }
        if self.protocol.tools_in_template:
            body["tools"] = [self.protocol.tool_schema]
            body["tool_choice"] = "none" if forbid_call else "auto"
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
            if role == "tool" and not self.protocol.tools_in_template:
                out.append({"role": "user", "content": parts})  # the turn's text carries its own <tool_response>
            elif role == "tool":
                out.append({"role": "tool", "tool_call_id": call_id or "call_0", "content": parts})
            else:
                out.append({"role": role, "content": parts})
        return out


class _RemoteSession:
    """One batch: its turns are posted concurrently; each row's images are encoded once."""

    def __init__(self, engine: RemoteEngine, model: str):
        self.engine = engine
        self.model = model
        self.urls: dict[int, dict[int, str]] = {}

    def generate(self, rows: list[int], conversations: list[list[protocol.Message]],
                 forbid_call: list[bool]) -> list[Generated]:
        jobs = list(zip(rows, conversations, forbid_call, strict=True))
        workers = max(1, min(self.engine.max_workers, len(jobs)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="visionthink-remote") as pool:
            return list(pool.map(lambda job: self._turn(*job), jobs))

    def _turn(self, row: int, messages: list[protocol.Message], forbid_call: bool) -> Generated:
        began = time.perf_counter()
        body = self.engine._body(self.model, messages, self.urls.setdefault(row, {}), forbid_call)
        reply = self.engine._call("POST", "/v1/chat/completions", body)
        usage = reply.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
        return Generated(reply_text(reply), generated, sequence_tokens=int(usage.get("prompt_tokens") or 0) + generated,
                         seconds=time.perf_counter() - began)


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
