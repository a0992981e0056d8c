"""From a validated request model to the work the server does: the checks that need the server's settings.

The model name, the mode, parameters that are refused rather than ignored, image and text
limits, special-token strings in text (they would be read as control tokens: `<|image_pad|>`
breaks the image count, `<|im_start|>` forges a turn), and the sampling settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.modes import MODES
from visionthink.serve.config import SERVED_MODES, ServeConfig
from visionthink.serve.errors import ApiError
from visionthink.serve.schemas import ChatCompletionRequest, ImagePart

TOOL_CALL_MARKERS = ("<tool_call>", "</tool_call>")
"""Special tokens assistant and tool messages may hold: a raw-mode client sends back the model's own tool
calls, and the protocol's error turns name them ("unterminated <tool_call>"). Neither breaks the rendering."""


@dataclass(frozen=True)
class BatchKey:
    """Jobs that may share a batch: same kind ('visionthink' mode name or 'raw') and same sampling."""

    kind: str
    sampling: tuple = field(default=())

    def sampling_config(self, default: SamplingConfig) -> SamplingConfig:
        if not self.sampling:
            return default
        return SamplingConfig(**dict(self.sampling))


@dataclass
class ChatRequest:
    """A checked chat completion request (images still as URLs)."""

    mode: str
    messages: list[dict[str, Any]]
    stream: bool
    sampling: SamplingConfig
    tools: list[dict] | None = None
    ban_tool_calls: bool = False
    banned_ids: tuple[int, ...] = ()
    """Token ids `logit_bias` bans (raw mode)."""
    return_image: bool = False
    include_usage_chunk: bool = False
    image_url: str | None = None
    """VisionThink modes: the user's first image."""
    image_urls: list[str] = field(default_factory=list)
    """Every image URL of the request, in order."""
    question: str = ""
    tool_threshold: float | None = None
    """VisionThink and zoom modes: call the tool when P(tool) >= this (None: the greedy decision)."""
    escalate_below: float | None = None
    """VisionThink and zoom modes: withdraw a first-turn answer less confident than this for a resize (None: answers
    stand)."""
    logprobs: bool = False
    """Raw mode: the reply carries each written token's log-probability (`choices[0].logprobs.content`)."""

    @property
    def key(self) -> BatchKey:
        return BatchKey(self.mode, tuple(sorted(asdict(self.sampling).items())))


class SpecialTokens:
    """Finds special-token strings (the tokenizer's control tokens) in text."""

    def __init__(self, tokens: list[str]):
        ordered = sorted(set(tokens), key=len, reverse=True)
        self.any = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        rest = [t for t in ordered if t not in TOOL_CALL_MARKERS]
        self.lenient = re.compile("|".join(map(re.escape, rest))) if rest else None

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        return cls([*tokenizer.all_special_tokens, *added])

    def check(self, text: str, where: str, lenient: bool = False) -> None:
        """Refuse `text` holding a special token (`lenient`: tool-call markers allowed)."""
        pattern = self.lenient if lenient else self.any
        found = pattern.search(text) if pattern is not None else None
        if found is not None:
            raise ApiError(400, f"{where} holds the special token {found.group()!r}; it is reserved for the "
                           "chat format (write it differently, e.g. with a space inside)", "special_token_in_text",
                           param=where)


def check_unicode(body: Any) -> None:
    """Refuse text that is not valid Unicode (JSON can spell lone surrogates such as "\\ud800")."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"request text is not valid Unicode ({error.reason} at character {error.start})",
                       "invalid_unicode") from None
    except RecursionError:
        raise ApiError(400, "request body nests too deep", "too_deep") from None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests objects and arrays deeper than `limit` (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def check_structure(body: dict[str, Any], config: ServeConfig) -> None:
    """Refuse, from the parsed JSON and before validation or templating, a request with too many messages, content
    parts, tool calls or tools, or tools and tool calls nested too deep."""
    messages, tools = body.get("messages"), body.get("tools")
    counts = {"messages": 0, "content parts": 0, "tool calls": 0, "tools": len(tools) if isinstance(tools, list) else 0}
    nested: list[Any] = list(tools) if isinstance(tools, list) else []
    if isinstance(messages, list):
        counts["messages"] = len(messages)
        for message in messages[:config.max_messages]:
            if not isinstance(message, dict):
                continue
            if isinstance(message.get("content"), list):
                counts["content parts"] += len(message["content"])
            if isinstance(message.get("tool_calls"), list):
                counts["tool calls"] += len(message["tool_calls"])
                nested.extend(message["tool_calls"])
    limits = {"messages": config.max_messages, "content parts": config.max_content_parts,
              "tool calls": config.max_tool_calls, "tools": config.max_tools}
    for name, count in counts.items():
        if count > limits[name]:
            raise ApiError(400, f"too many {name}: {count}, at most {limits[name]} per request",
                           f"too_many_{name.replace(' ', '_')}", param="tools" if name == "tools" else "messages")
    if any(_too_deep(item, config.max_json_depth) for item in nested if isinstance(item, (dict, list))):
        raise ApiError(400, f"a tool or tool call nests deeper than {config.max_json_depth} levels", "too_deep",
                       param="tools")


REFUSED = {
    "stop": "stop sequences are not supported; the model stops at the end of its turn",
    "top_logprobs": "top_logprobs are not supported (logprobs: true gives each written token's own)",
    "frequency_penalty": "frequency_penalty is not supported (only 0)",
    "presence_penalty": "presence_penalty is not supported (only 0)",
}


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    given = {"stop": request.stop, "top_logprobs": request.top_logprobs,
             "frequency_penalty": request.frequency_penalty,
             "presence_penalty": request.presence_penalty}
    for name, value in given.items():
        if value not in (None, False, 0, "", [], {}):
            raise ApiError(400, REFUSED[name], "unsupported_parameter", param=name)
    if request.response_format is not None and request.response_format.get("type", "text") != "text":
        raise ApiError(400, "response_format: only {'type': 'text'} is supported", "unsupported_parameter",
                       param="response_format")
    if request.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "unsupported_parameter", param="n")
    if request.tool_choice not in ("auto", "none", None):
        raise ApiError(400, "tool_choice must be 'auto' or 'none'", "unsupported_parameter", param="tool_choice")


MAX_BANNED_IDS = 4096
"""`logit_bias` entries a request may carry."""


def banned_ids(logit_bias: dict[str, float] | None) -> tuple[int, ...]:
    """The token ids a `logit_bias` bans. Only bans are supported (-100 or lower: the token is never written), as the
    remote engine sends them to keep the tool call and image tokens out of a turn."""
    if not logit_bias:
        return ()
    if len(logit_bias) > MAX_BANNED_IDS:
        raise ApiError(400, f"logit_bias has {len(logit_bias)} entries; at most {MAX_BANNED_IDS}",
                       "unsupported_parameter", param="logit_bias")
    ids = []
    for key, value in logit_bias.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 9):
            raise ApiError(400, f"logit_bias key {key[:20]!r} is not a token id", "invalid_parameter",
                           param="logit_bias")
        if value > -100:
            raise ApiError(400, "logit_bias: only bans (-100) are supported", "unsupported_parameter",
                           param="logit_bias")
        ids.append(int(key))
    return tuple(sorted(set(ids)))


def _sampling(request: ChatCompletionRequest, default: SamplingConfig, config: ServeConfig) -> SamplingConfig:
    sampling = SamplingConfig(**asdict(default))
    sampling.seed = request.seed
    wanted = default.max_new_tokens if request.new_tokens is None else request.new_tokens
    sampling.max_new_tokens = min(wanted, config.max_new_tokens)  # the engine's default (the profile's) too
    if request.temperature is not None:
        sampling.do_sample = request.temperature > 0
        sampling.temperature = float(request.temperature) if request.temperature > 0 else 1.0
    if request.top_p is not None:
        sampling.top_p = float(request.top_p)
    if not sampling.do_sample:
        sampling.seed = None  # greedy decoding draws nothing: one batch key for all seeds
    return sampling


def tool_threshold(request: ChatCompletionRequest, mode: str, config: ServeConfig) -> float | None:
    """The request's `visionthink_tool_threshold` (absent: the server's default; null: greedy); a threshold given for
    a mode without a first-turn decision is refused, the server's default does not apply there."""
    return _first_turn_setting(request, mode, "tool_threshold", config.tool_threshold)


def escalate_below(request: ChatCompletionRequest, mode: str, config: ServeConfig) -> float | None:
    """The request's `visionthink_escalate_below` (absent: the server's default; null: answers stand), refused for a
    mode without a first-turn decision as `tool_threshold` is."""
    return _first_turn_setting(request, mode, "escalate_below", config.escalate_below)


def _first_turn_setting(request: ChatCompletionRequest, mode: str, name: str, default: float | None) -> float | None:
    """`visionthink_<name>` of a request in a mode that decides at its first turn, else None (given there: a 400)."""
    field_name = f"visionthink_{name}"
    given = field_name in request.model_fields_set
    value = getattr(request, field_name) if given else default
    if mode in MODES and MODES[mode].decides:
        return None if value is None else float(value)
    if given and value is not None:
        deciding = ", ".join(mode_name for mode_name, m in MODES.items() if m.decides)
        raise ApiError(400, f"{field_name} applies to the modes that decide whether to call a tool ({deciding}); "
                       f"mode {mode!r} makes no such decision", "invalid_parameter", param=field_name)
    return None


def chat_request(request: ChatCompletionRequest, config: ServeConfig, default_sampling: SamplingConfig,
                 special: SpecialTokens) -> ChatRequest:
    """Check `request` against the server's model, limits and vocabulary; images are located, not decoded."""
    if request.model is not None and request.model != config.model_name:
        raise ApiError(404, f"model {request.model[:80]!r} is not served here; this server serves "
                       f"{config.model_name!r}", "model_not_found", param="model")
    _refuse_unsupported(request)
    tools = [tool.model_dump(exclude_unset=True) for tool in request.tools] if request.tools else None
    mode = request.visionthink_mode or ("raw" if tools else config.default_mode or "visionthink")
    if mode in MODES and MODES[mode].calls == "oracle":
        raise ApiError(400, f"visionthink_mode {mode!r} is not served: an oracle needs the true answer (whether the "
                       "item needs high resolution, where the answer is), which a request does not carry; served "
                       f"modes: {', '.join(SERVED_MODES)}", "invalid_parameter", param="visionthink_mode")
    if mode not in SERVED_MODES:
        raise ApiError(400, f"visionthink_mode must be one of {', '.join(SERVED_MODES)}", "invalid_parameter",
                       param="visionthink_mode")
    if tools and mode != "raw":
        raise ApiError(400, "a request with tools is answered in raw mode (the client runs the tool loop); drop "
                       "visionthink_mode or set it to 'raw'", "invalid_parameter", param="tools")
    if request.logprobs and (mode != "raw" or request.stream):
        raise ApiError(400, "logprobs are supported in raw mode only (requests with tools), without stream",
                       "unsupported_parameter", param="logprobs")
    if request.logit_bias and mode != "raw":
        raise ApiError(400, "logit_bias is supported in raw mode only (requests with tools)", "unsupported_parameter",
                       param="logit_bias")
    chat = ChatRequest(
        mode=mode, messages=[], stream=request.stream, sampling=_sampling(request, default_sampling, config),
        tools=tools, ban_tool_calls=request.tool_choice == "none", banned_ids=banned_ids(request.logit_bias),
        return_image=request.visionthink_return_image,
        include_usage_chunk=request.stream_options is not None and request.stream_options.include_usage,
        tool_threshold=tool_threshold(request, mode, config),
        escalate_below=escalate_below(request, mode, config),
        logprobs=bool(request.logprobs),
    )
    text_chars = len(json.dumps(tools)) if tools else 0
    if tools:
        special.check(json.dumps(tools, ensure_ascii=False), "tools")
    last_user_text = None
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        role = "system" if message.role == "developer" else message.role
        parts: list[dict[str, Any]] = []
        for part in message.parts():
            if isinstance(part, ImagePart):
                parts.append({"type": "image_url", "url": part.url})
                chat.image_urls.append(part.url)
            else:
                special.check(part.text, where, lenient=role in ("assistant", "tool"))
                text_chars += len(part.text)
                parts.append({"type": "text", "text": part.text})
        if len(chat.image_urls) > config.max_images:
            raise ApiError(400, f"too many images: at most {config.max_images} per request", "too_many_images",
                           param="messages")
        if role == "user":
            last_user_text = "".join(p["text"] for p in parts if p["type"] == "text")
            if chat.image_url is None:
                chat.image_url = next((p["url"] for p in parts if p["type"] == "image_url"), None)
        converted: dict[str, Any] = {"role": role, "content": parts}
        if role == "assistant" and message.tool_calls:
            converted["tool_calls"] = [{"type": "function", "function": call.function.model_dump()}
                                       for call in message.tool_calls]
            calls_text = json.dumps(converted["tool_calls"], ensure_ascii=False)
            special.check(calls_text, where, lenient=True)
            text_chars += len(calls_text)
        chat.messages.append(converted)
    if text_chars > config.max_text_chars:
        raise ApiError(400, f"too much text: {text_chars} characters, the limit is {config.max_text_chars}",
                       "text_too_long", param="messages")
    if mode != "raw":
        if chat.image_url is None:
            raise ApiError(400, "a VisionThink request needs an image: add an image_url part to a user message",
                           "missing_image", param="messages")
        if not last_user_text or not last_user_text.strip():
            raise ApiError(400, "the last user message has no question text", "missing_question", param="messages")
        chat.question = last_user_text.strip()
    return chat
