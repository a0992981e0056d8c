"""Run VisionThink episodes against any OpenAI-compatible VLM server, the protocol applied on our side.

`RemoteEngine(base_url, processor=...).run(requests, mode)` returns the same `protocol.Episode`s as
`TransformersEngine.run`: the views are made here, each turn is one `/v1/chat/completions` request, and the reply
is parsed by the protocol. The server only has to render messages with the project's chat template and write one
assistant turn: `vllm serve` (any data or tensor parallel layout), `transformers serve` (CPU; the stand-in for
vLLM here), or `visionthink serve` (its raw mode, for requests that carry `tools`). See docs/scale.md.

What keeps remote episodes equal to local ones:
- The rendering check. With the served folder's `processor` (pixel grid and tokenizer), every reply's
  `usage.prompt_tokens` is compared with the local rendering's length; a server that renders otherwise (another
  chat template, a tokenizer-only processor that drops the images) fails the run with `RemoteEngineError`.
- Replies split by the server's parsers are joined back as the model wrote them: `reasoning_content` becomes
  `<think>...</think>` and structured `tool_calls` inline `<tool_call>` blocks (`reply_text`).
- The tool is kept out of `full`/`low` turns and the oracle's no-resize first turns by `tool_choice: "none"` and
  by a -100 `logit_bias` on the `<tool_call>` token; image and vision special tokens are always banned that way.
  vLLM and `transformers serve` ignore `tool_choice` for generation but honour `logit_bias`; `visionthink serve`
  honours both (its `logit_bias` takes bans only).
- Visual tokens come from the served processor's pixel grid, as in the local engines.
- Escalating unsure answers (`Request.escalate_below`): a run that asks for it sends `logprobs: true` on first turns
  and reads the answer's confidence from `choices[0].logprobs.content` (`engines.confidence`). `vllm serve` and
  `visionthink serve` (raw mode) return them; a server that does not (`transformers serve` ignores `logprobs`) fails
  the run with `RemoteEngineError`, never a silent "no escalation".
Requests run concurrently (`max_workers`, so a batching server batches them); connection errors, timeouts, 429 and
5xx are retried with capped exponential backoff (tenacity); other HTTP errors fail at once.
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import io
import json
import math
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from PIL import Image
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from visionthink import protocol
from visionthink.engines.base import BANNED_BIAS, Generated, never_write_ids, run_episodes, stop_ids
from visionthink.engines.confidence import ANSWER_OPEN, answer_confidence
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import VisionThinkError
from visionthink.images import PixelGrid
from visionthink.profiles import ProtocolProfile, get_profile
from visionthink.tools import codec

RETRIED_STATUS = (408, 429, 500, 502, 503, 504)


class RemoteEngineError(VisionThinkError):
    """The server refused a request, could not be reached, or renders conversations otherwise than we do."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient
        """Worth retrying: no connection, a timeout, 429 or 5xx."""


class RemoteEngine:
    """Episodes on a model behind an OpenAI-compatible `/v1/chat/completions`."""

    records_confidence = True
    """A run whose requests escalate asks the server for token log-probabilities (`logprobs: true`)."""
    asks_logprobs = False
    """Set on the copy that runs requests with `escalate_below` (`run`): first turns then send `logprobs: true`."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 sampling: SamplingConfig | None = None, grid: PixelGrid | None = None, timeout: float = 120.0,
                 max_workers: int = 8, assistant_tool_calls: str = "inline", batch_size: int = 64,
                 protocol: str | ProtocolProfile | None = None, processor=None, attempts: int = 4):
        """`processor`: the served folder's (`models.loading.load_processor`); it gives the pixel grid, the banned
        token ids and the rendering check. Without it only `grid` (default Qwen2.5-VL's) is known: no bans beyond
        `tool_choice`, no check."""
        if assistant_tool_calls not in ("inline", "structured"):
            raise ValueError("assistant_tool_calls must be 'inline' or 'structured'")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.sampling = sampling or SamplingConfig(max_new_tokens=get_profile(protocol).max_new_tokens)
        """Default: greedy, the profile's turn budget (`ProtocolProfile.max_new_tokens`)."""
        self.processor = processor
        self.grid = grid or (processor.grid if processor is not None else PixelGrid())
        self.timeout = timeout
        self.max_workers = max_workers
        self.batch_size = batch_size
        self.assistant_tool_calls = assistant_tool_calls
        self.attempts = attempts
        self._model = model
        self.protocol = get_profile(protocol)
        """The conversation format. A profile whose system prompt holds the tool (`release`) is sent without `tools`
        (so `tool_choice` cannot keep a call out of a turn) and with its tool turns as user turns."""
        self.banned_ids: list[int] = []
        self.tool_call_id: int | None = None
        self.stop_ids: list[int] = []
        if processor is not None:
            tokenizer = processor.tokenizer
            self.banned_ids = never_write_ids(tokenizer)
            self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
            self.stop_ids = stop_ids(tokenizer)

    # ------------------------------------------------------------ HTTP

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        """One request, retried while the failure is transient."""
        attempt = retry(retry=retry_if_exception(lambda e: getattr(e, "transient", False)),
                        stop=stop_after_attempt(self.attempts), wait=wait_exponential(multiplier=0.5, max=8),
                        reraise=True)(self._call_once)
        return attempt(method, path, body)

    def _call_once(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
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
            raise RemoteEngineError(f"{self.base_url}{path}: HTTP {error.code}: {detail}",
                                    transient=error.code in RETRIED_STATUS) from None
        except (urllib.error.URLError, OSError) as error:
            raise RemoteEngineError(f"{self.base_url}{path}: {error}", transient=True) from None
        except ValueError as error:
            raise RemoteEngineError(f"{self.base_url}{path}: reply is not JSON ({error})") from None

    @property
    def model(self) -> str:
        """The served model's id (asked from `/v1/models` when not given)."""
        if self._model is None:
            listing = self._call("GET", "/v1/models")
            try:
                self._model = listing["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise RemoteEngineError(f"{self.base_url}/v1/models lists no model; name the served one "
                                        "(--served-model)") from None
        return self._model

    # ------------------------------------------------------------ episodes

    def run(self, requests: list, mode: str = "visionthink", progress=None,
            sampling: SamplingConfig | None = None) -> list[protocol.Episode]:
        """Episodes for all requests (any objects with `image`, `question`, `needs_high_res`), in order; `sampling`
        replaces the engine's for this call."""
        engine = self if sampling is None else self.with_sampling(sampling)
        if any(getattr(r, "escalate_below", None) is not None for r in requests):
            engine = copy.copy(engine)
            engine.asks_logprobs = True
        return run_episodes(engine, requests, mode, progress)

    def with_sampling(self, sampling: SamplingConfig) -> RemoteEngine:
        """The same engine posting with `sampling` (the served model's id asked here, once for both)."""
        engine = copy.copy(self)
        engine._model, engine.sampling = self.model, sampling
        return engine

    def session(self) -> _RemoteSession:
        return _RemoteSession(self, self.model)

    def _body(self, model: str, messages: list[protocol.Message], urls: dict[int, str],
              forbid_call: bool, logprobs: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": self.openai_messages(messages, urls),
            "max_tokens": self.sampling.max_new_tokens,
            "stream": False,
        }
        if logprobs:
            body["logprobs"] = True
        tools = self.protocol.template_tools()
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "none" if forbid_call else "auto"
        banned = [*self.banned_ids, self.tool_call_id] if forbid_call and self.tool_call_id is not None \
            else self.banned_ids
        if banned:
            body["logit_bias"] = {str(token): BANNED_BIAS for token in banned}
        if self.sampling.do_sample:
            body["temperature"] = self.sampling.temperature
            body["top_p"] = self.sampling.top_p
            if self.sampling.seed is not None:
                body["seed"] = self.sampling.seed
        else:
            body["temperature"] = 0
        return body

    def check_reply_length(self, text: str, completion_tokens: int, reply: dict[str, Any]) -> None:
        """Refuse a reply whose text is much shorter than what the model wrote (`usage.completion_tokens`): a server
        whose parsers drop part of the turn (transformers 5.17's `transformers serve` drops the `<think>` text).
        A token or two of slack: the model may write a text in other tokens than re-encoding it gives."""
        finish = (reply.get("choices") or [{}])[0].get("finish_reason")
        stop = 1 if finish in ("stop", "tool_calls") else 0
        written = len(self.processor.tokenizer.encode(text, add_special_tokens=False)) + stop
        if completion_tokens - written > max(2, completion_tokens // 20):
            raise RemoteEngineError(
                f"{self.base_url} wrote {completion_tokens} tokens but its reply holds only {written} tokens' worth "
                "of text: the server drops part of the turn (e.g. a reasoning parser that keeps no "
                "reasoning_content); serve without such parsers (docs/scale.md)")

    def local_prompt_tokens(self, messages: list[protocol.Message]) -> int:
        """The prompt's length as the local engines render it (text tokens plus each image's visual tokens)."""
        from visionthink.tokens import render_text

        text = render_text(self.processor, messages, add_generation_prompt=True, protocol=self.protocol)
        images = protocol.images_in(messages)
        placeholders = len(self.processor.tokenizer.encode(text, add_special_tokens=False))
        return placeholders + sum(self.grid.tokens(*image.size) - 1 for image in images)

    def openai_messages(self, messages: list[protocol.Message], urls: dict[int, str] | None = None) -> list[dict]:
        """A protocol conversation in OpenAI's chat format (images as PNG data URLs, encoded once)."""
        urls = {} if urls is None else urls
        out: list[dict[str, Any]] = []
        call_id = None
        for message in messages:
            role = message["role"]
            if role in ("system", "assistant"):
                text = protocol.assistant_text(message)
                if role == "assistant" and codec.CALL_OPEN in text:
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
                 forbid_call: list[bool], answer_confidence: bool = False) -> list[Generated]:
        confidence = answer_confidence and self.engine.asks_logprobs
        jobs = [(row, messages, forbid, confidence)
                for row, messages, forbid in zip(rows, conversations, forbid_call, strict=True)]
        workers = max(1, min(self.engine.max_workers, len(jobs)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="visionthink-remote") as pool:
            return list(pool.map(lambda job: self._turn(*job), jobs))

    def _turn(self, row: int, messages: list[protocol.Message], forbid_call: bool, confidence: bool) -> Generated:
        began = time.perf_counter()
        body = self.engine._body(self.model, messages, self.urls.setdefault(row, {}), forbid_call, confidence)
        reply = self.engine._call("POST", "/v1/chat/completions", body)
        usage = reply.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        if self.engine.processor is not None and prompt:
            local = self.engine.local_prompt_tokens(messages)
            if local != prompt:
                raise RemoteEngineError(
                    f"{self.engine.base_url} renders this conversation as {prompt} prompt tokens, the local "
                    f"template as {local}: serve the folder with the project's chat template and image processor "
                    "(docs/scale.md), and pass that folder as --model")
        generated = int(usage.get("completion_tokens") or 0)
        text = reply_text(reply)
        if self.engine.processor is not None and generated:
            self.engine.check_reply_length(text, generated, reply)
        newline = int(self.engine.protocol.turn_end_newline)  # the template's newline after the end marker
        return Generated(text, generated, sequence_tokens=prompt + generated + newline,
                         seconds=time.perf_counter() - began,
                         answer_confidence=self._confidence(reply, text) if confidence else None)

    def _confidence(self, reply: dict[str, Any], text: str) -> float | None:
        """The answer confidence from the reply's token log-probabilities; a reply without them fails the run."""
        if ANSWER_OPEN not in text:
            return None
        content = ((reply.get("choices") or [{}])[0].get("logprobs") or {}).get("content")
        if not content:
            raise RemoteEngineError(
                f"{self.engine.base_url} returned no token log-probabilities (asked with logprobs: true), so an "
                "unsure answer cannot be told from a sure one; escalate on a server that returns them (vllm serve, "
                "visionthink serve) or run without --escalate-below")
        try:
            pieces = [str(step["token"]) for step in content]
            probs = [math.exp(float(step["logprob"])) for step in content]
        except (KeyError, TypeError, ValueError):
            raise RemoteEngineError(f"malformed logprobs in a chat completion: {str(content)[:200]}") from None
        return answer_confidence(pieces, probs)


def _structured_call(text: str, call_id: str) -> dict[str, Any]:
    """An assistant turn with a call as OpenAI's structured form: the text before the block, and its first call."""
    content, calls = codec.openai_tool_calls(text, lambda: call_id)
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": (content or "").rstrip() or None, "tool_calls": calls[:1]}


def reply_text(reply: dict[str, Any]) -> str:
    """The assistant turn as the model wrote it: a split-off `reasoning_content` (or `reasoning`) goes back into
    `<think>...</think>`, structured tool calls back into inline `<tool_call>` blocks."""
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise RemoteEngineError(f"malformed chat completion: {str(reply)[:200]}") from None
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning is not None and "<think>" not in text:
        text = f"<think>{reasoning}</think>\n{text}"
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments", "{}")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            pass
        if text and not text[-1].isspace():
            text += "\n"
        text += codec.call_block(function.get("name"), arguments)
    return text


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
