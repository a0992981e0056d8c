"""Chat completion requests as Pydantic models, in the shape of OpenAI's API.

Only the structure is checked here (types, ranges, part kinds); what depends on the server
(its model name, limits, vocabulary) is checked by `serve.checks`. Unknown top-level fields
are ignored, as OpenAI clients send many; fields that would change the output but are not
implemented are accepted here and refused there with 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from visionthink.serve.errors import ApiError


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return value


Number = Annotated[float, BeforeValidator(_number)]
"""A JSON number (not a string, not true/false)."""


class _Model(BaseModel):
    """Unknown keys are ignored, as OpenAI clients send many."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_Model):
    url: str
    detail: str | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Model):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def parts(self) -> list[TextPart | ImagePart]:
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionDefinition


class StreamOptions(_Model):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Model):
    """`POST /v1/chat/completions`: OpenAI's fields plus `visionthink_mode`, `visionthink_return_image` and
    `visionthink_tool_threshold` and `visionthink_escalate_below`."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    n: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = "auto"
    stop: str | list[str] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None
    logit_bias: dict[str, float] | None = None
    visionthink_mode: str | None = None
    visionthink_return_image: StrictBool = False
    visionthink_tool_threshold: Number | None = Field(default=None, ge=0, le=1)
    """Call the tool when P(tool) >= this; absent: the server's default, null: the greedy decision."""
    visionthink_escalate_below: Number | None = Field(default=None, ge=0, le=1)
    """Withdraw a first-turn answer less confident than this for a resize (`engines.confidence`); absent: the
    server's default, null: answers stand."""

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """The request model of a parsed JSON body, or the first problem as a 400 `ApiError`."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        raise _api_error(max(problems, key=lambda p: len(p["loc"]))) from None  # the deepest is the most specific


def _api_error(problem: dict[str, Any]) -> ApiError:
    location = problem["loc"]
    where = _where(location)
    message = f"{where}: {problem['msg']}" if where else problem["msg"]
    if problem["type"] in ("union_tag_invalid", "union_tag_not_found") and "content" in location:
        return ApiError(400, f"{where}: unsupported content part type (text and image_url are supported)",
                        "unsupported_content", param=where)
    if location and location[0] == "messages":
        code = "invalid_image_url" if "image_url" in location else "invalid_message"
        return ApiError(400, message, code, param=where)
    return ApiError(400, message, "invalid_parameter", param=where or None)


def _where(location: tuple) -> str:
    """A JSON path such as `messages[0].content[1].image_url.url` (union branch labels left out)."""
    text, skip_tag = "", False
    for key in location:
        if isinstance(key, int):
            text += f"[{key}]"
            continue
        if "tagged-union" in key:
            skip_tag = True  # the list of parts: its index comes next, then the part's tag
            continue
        if skip_tag and text.endswith("]"):
            skip_tag = False
            continue
        if "[" in key or key[:1].isupper() or key in ("str", "int", "float", "bool"):
            continue
        text += f".{key}" if text else key
    return text
