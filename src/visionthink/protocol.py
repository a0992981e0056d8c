"""The VisionThink conversation, defined once for training, inference, evaluation and serving.

Turn 1: system prompt listing the `resize_image` tool, user turn with the low-res image.
The model answers (`<think>..</think><answer>..</answer>`) or calls the tool. On a valid
call, a tool turn carries the high-res image and the model answers. At most 2 assistant turns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

MAX_ASSISTANT_TURNS = 2
TOOL_NAME = "resize_image"
RESIZE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Double the resolution of the current image. Use it only if the critical information "
            "cannot be obtained at the current resolution."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "action": {
                    "type": "string",
                    "enum": ["resize"],
                    "description": "Always 'resize': returns the image at full resolution.",
                }
            },
            "required": ["action"],
        },
    },
}
SYSTEM_PROMPT = "You are a helpful assistant."
USER_INSTRUCTION = (
    "Think in <think> </think>, then give the final answer in <answer> </answer>. "
    "If the image is too small to answer, call resize_image instead of answering."
)
TOOL_RESPONSE_TEXT = "Full resolution. Think in <think> </think>, then answer in <answer> </answer>."
RESIZE_CALL_JSON = json.dumps({"name": TOOL_NAME, "arguments": {"action": "resize"}})

# Region zoom (issue 12; the `visionthink-zoom` profile). The box is in the low-res view's pixels; the tool turn
# holds that region of the high-res view (`images.zoom_region`). The strings above are unchanged.
ZOOM_TOOL_NAME = "zoom_image"
ZOOM_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": ZOOM_TOOL_NAME,
        "description": (
            "Show one region of the current image at full resolution. Use it instead of resize_image when "
            "the critical information is small and lies in one region."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "box": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "[x1, y1, x2, y2]: left, top, right, bottom, in pixels of the current image.",
                }
            },
            "required": ["box"],
        },
    },
}
ZOOM_USER_INSTRUCTION = (
    "Think in <think> </think>, then give the final answer in <answer> </answer>. "
    "If a small detail is unreadable, call zoom_image on its region; if the whole image is too small, "
    "call resize_image. Call a tool instead of answering."
)
ZOOM_RESPONSE_TEXT = "Region at full resolution. Think in <think> </think>, then answer in <answer> </answer>."

Message = dict[str, Any]


def image_part(image: Image.Image) -> dict[str, Any]:
    return {"type": "image", "image": image}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def first_turn(question: str, image: Image.Image, instruction: str = USER_INSTRUCTION) -> list[Message]:
    """System prompt and the user turn holding the first (usually low-res) image."""
    return [
        {"role": "system", "content": [text_part(SYSTEM_PROMPT)]},
        {"role": "user", "content": [image_part(image), text_part(f"{question}\n{instruction}")]},
    ]


def assistant_turn(text: str) -> Message:
    """An assistant turn exactly as the model produced it (tool calls stay inline)."""
    return {"role": "assistant", "content": [text_part(text)]}


def tool_turn(image: Image.Image) -> Message:
    """The tool's answer to a resize call: the high-res image and how to go on."""
    return {"role": "tool", "name": TOOL_NAME, "content": [image_part(image), text_part(TOOL_RESPONSE_TEXT)]}


def error_turn(error: str) -> Message:
    """The tool's answer to a malformed call."""
    return {"role": "tool", "name": TOOL_NAME, "content": [text_part(f"Error: {error}")]}


def zoom_turn(crop: Image.Image) -> Message:
    """The tool's answer to a zoom call: the region of the high-res view (`images.zoom_region`)."""
    return {"role": "tool", "name": ZOOM_TOOL_NAME, "content": [image_part(crop), text_part(ZOOM_RESPONSE_TEXT)]}


def tool_reply(turn: Turn, text: str, high_res_image: Image.Image) -> Message | None:
    """The tool's turn after an assistant turn: the high-res image for a resize call, an error turn for a
    call that cannot run, None when the turn called no tool (the episode ends)."""
    if turn.kind == "resize":
        return tool_turn(high_res_image)
    if turn.kind == "malformed" and "<tool_call>" in text:
        return error_turn(turn.error or "malformed tool call")
    return None


def answer_text(think: str, answer: str) -> str:
    """The canonical direct-answer turn."""
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def resize_text(think: str) -> str:
    """The canonical resize-call turn."""
    return f"<think>{think}</think>\n<tool_call>\n{RESIZE_CALL_JSON}\n</tool_call>"


def zoom_call_json(box) -> str:
    """The canonical zoom call's JSON; whole numbers are written as integers."""
    values = [int(v) if float(v).is_integer() else round(float(v), 1) for v in box]
    return json.dumps({"name": ZOOM_TOOL_NAME, "arguments": {"box": values}})


def zoom_text(think: str, box) -> str:
    """The canonical zoom-call turn (`box`: [x1, y1, x2, y2] in the low-res view's pixels)."""
    return f"<think>{think}</think>\n<tool_call>\n{zoom_call_json(box)}\n</tool_call>"


def images_in(messages: list[Message]) -> list[Image.Image]:
    """The images of a conversation in the order the template renders them."""
    found = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            found.extend(part["image"] for part in content if part.get("type") == "image")
    return found


# ---------------------------------------------------------------- parsing

TurnKind = Literal["answer", "resize", "zoom", "malformed"]
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
"""What ends an assistant turn (the first is the chat format's, the second the tokenizer's end of text)."""


@dataclass(frozen=True)
class Turn:
    """What one assistant turn says.

    `well_formed` is the paper's format check for the turn: one think block, then exactly
    one answer block (direct answer) or exactly one tool call (resize), nothing else.
    """

    kind: TurnKind
    answer: str | None = None
    think: str | None = None
    well_formed: bool = False
    error: str | None = None
    box: tuple[float, float, float, float] | None = None
    """A zoom call's box, [x1, y1, x2, y2] in the low-res view's pixels (only for `kind == "zoom"`)."""


def parse_turn(text: str, zoom: bool = False) -> Turn:
    """Classify an assistant turn as an answer, a resize call or malformed (with `zoom`, also a `zoom_image`
    call: the `visionthink-zoom` profile). Never raises."""
    try:
        return _parse_turn(text, zoom)
    except Exception as error:  # noqa: BLE001 - the parser must never raise on model output
        return Turn("malformed", error=f"unparseable turn ({type(error).__name__})")


def _parse_turn(text: str, zoom: bool = False) -> Turn:
    if not isinstance(text, str):
        return Turn("malformed", error="turn is not text")
    body = text.strip()
    for marker in END_MARKERS:
        body = body.removesuffix(marker).rstrip()
    thinks = _THINK.findall(body)
    think = thinks[0].strip() if thinks else None
    outside = _THINK.sub("", body, count=1)  # tags merely mentioned while thinking do not count
    calls = _TOOL_CALL.findall(outside)
    answers = _ANSWER.findall(outside)
    starts_with_think = body.startswith("<think>") and len(thinks) == 1
    if calls and answers:
        return Turn("malformed", think=think, error="turn both answers and calls a tool")
    if calls:
        if len(calls) > 1:
            return Turn("malformed", think=think, error="more than one tool call in a turn")
        if zoom:
            clean = starts_with_think and not _TOOL_CALL.sub("", outside).strip()
            return _zoom_profile_call(calls[0], think, clean)
        error = _check_resize_call(calls[0])
        if error:
            return Turn("malformed", think=think, error=error)
        rest = _TOOL_CALL.sub("", outside).strip()
        exact = _check_resize_call(calls[0], strict=True) is None
        return Turn("resize", think=think, well_formed=starts_with_think and not rest and exact)
    if "<tool_call>" in outside:
        return Turn("malformed", think=think, error="unterminated <tool_call>")
    answer = extract_answer(outside)
    if answer is None:
        return Turn("malformed", think=think, error="no <answer> and no tool call")
    rest = _ANSWER.sub("", outside).strip()
    well_formed = starts_with_think and len(answers) == 1 and not rest and "<think>" not in answers[0]
    return Turn("answer", answer=answer, think=think, well_formed=well_formed)


def _check_resize_call(payload: str, strict: bool = False) -> str | None:
    """None when the payload is a valid resize_image call, else why not.

    A call is executed when it names the tool and any `action` it gives is "resize" (a missing
    `action` or extra arguments are tolerated). With `strict`, the paper's format check: `action` is
    required (as `RESIZE_TOOL` declares it) and no other argument is allowed, so a tolerated call
    still runs but earns no format reward.
    """
    try:
        call = json.loads(payload.strip())
    except (json.JSONDecodeError, RecursionError):
        return "tool call is not valid JSON"
    if not isinstance(call, dict):
        return "tool call is not a JSON object"
    if call.get("name") != TOOL_NAME:
        return f"unknown tool {str(call.get('name'))[:40]!r}; the only tool is {TOOL_NAME}"
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return "tool arguments are not valid JSON"
    if not isinstance(arguments, dict):
        return "tool arguments are not a JSON object"
    action = arguments.get("action", "resize")
    if action != "resize":
        return f"unknown action {str(action)[:40]!r}; expected 'resize'"
    if strict:
        if "action" not in arguments:
            return "resize_image call without its required argument 'action'"
        extra = sorted(str(key)[:40] for key in arguments if key != "action")
        if extra:
            return f"resize_image call with unknown argument(s) {', '.join(map(repr, extra[:5]))}"
    return None


def _zoom_profile_call(payload: str, think: str | None, clean: bool) -> Turn:
    """A call under the zoom profile: `resize_image` (checked as `_check_resize_call` does) or `zoom_image` with a
    box of four finite numbers, x1 < x2 and y1 < y2 (where it lies is checked against the view by
    `check_zoom_turn`). `clean`: the turn is one think block and the call, nothing else."""
    try:
        call = json.loads(payload.strip())
    except (json.JSONDecodeError, RecursionError):
        return Turn("malformed", think=think, error="tool call is not valid JSON")
    if isinstance(call, dict) and call.get("name") == TOOL_NAME:
        error = _check_resize_call(payload)
        if error:
            return Turn("malformed", think=think, error=error)
        return Turn("resize", think=think, well_formed=clean and _check_resize_call(payload, strict=True) is None)
    if not isinstance(call, dict):
        return Turn("malformed", think=think, error="tool call is not a JSON object")
    if call.get("name") != ZOOM_TOOL_NAME:
        return Turn("malformed", think=think, error=(f"unknown tool {str(call.get('name'))[:40]!r}; "
                                                     f"the tools are {TOOL_NAME} and {ZOOM_TOOL_NAME}"))
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return Turn("malformed", think=think, error="tool arguments are not valid JSON")
    if not isinstance(arguments, dict):
        return Turn("malformed", think=think, error="tool arguments are not a JSON object")
    if "box" not in arguments:
        return Turn("malformed", think=think, error="zoom_image call without its required argument 'box'")
    box, error = zoom_box(arguments["box"])
    if error:
        return Turn("malformed", think=think, error=error)
    exact = set(arguments) == {"box"}
    return Turn("zoom", think=think, well_formed=clean and exact, box=box)


def zoom_box(value: Any, view_size: tuple[int, int] | None = None
             ) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """`(box, None)` for a usable zoom box, else `(None, why not)`. Never raises.

    A box is a list of four finite numbers [x1, y1, x2, y2] (not strings, not booleans) with x1 < x2 and
    y1 < y2. With `view_size` (the low-res view's width, height) it must also overlap the view: a box partly
    outside is clamped later (`images.zoom_region`), one wholly outside is refused."""
    if not isinstance(value, (list, tuple)):
        return None, f"box must be a list [x1, y1, x2, y2] of numbers, not {type(value).__name__}"
    if len(value) != 4:
        return None, f"box must have 4 numbers [x1, y1, x2, y2], not {len(value)}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None, "box values must be numbers (pixels of the current image)"
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (OverflowError, ValueError):
        return None, "box values must be finite numbers"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "box values must be finite numbers"
    if not (x1 < x2 and y1 < y2):
        return None, "box is empty or inverted: it needs x1 < x2 and y1 < y2"
    if view_size is not None:
        width, height = view_size
        if min(x2, width) <= max(x1, 0.0) or min(y2, height) <= max(y1, 0.0):
            return None, f"box lies outside the image (the image is {width}x{height} pixels)"
    return (x1, y1, x2, y2), None


def check_zoom_turn(turn: Turn, view_size: tuple[int, int]) -> Turn:
    """A zoom turn whose box lies wholly outside the view (`view_size`: the low-res view's width, height)
    becomes a malformed call; any other turn is returned as it is."""
    if turn.kind != "zoom":
        return turn
    _, error = zoom_box(turn.box, view_size)
    if error is None:
        return turn
    return Turn("malformed", think=turn.think, error=error)


def extract_answer(text: str) -> str | None:
    """The final answer: the last `<answer>` block, `\\boxed{}` inside it unwrapped; else a bare `\\boxed{}`;
    else, when no `<answer>` opens anywhere, the text before a lone `</answer>` (see `_lone_close_answer`)."""
    if not isinstance(text, str):
        return None
    answers = _ANSWER.findall(text)
    if answers:
        return _unbox(answers[-1])
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return _lone_close_answer(text)


def _unbox(inner: str) -> str:
    inner = inner.strip()
    boxed = _last_boxed(inner)
    return (boxed if boxed is not None else inner).strip()


def _lone_close_answer(text: str) -> str | None:
    """`dots</answer>` -> "dots": a closing tag whose opening one the model left out.

    Only when no `<answer>` appears at all; the answer is what lies between the previous closing tag
    (`</think>`, `</tool_call>` or `</answer>`) and the last `</answer>`. Empty text gives None.
    """
    if "<answer>" in text or "</answer>" not in text:
        return None
    before = text[: text.rfind("</answer>")]
    start = max(before.rfind(tag) + len(tag) if tag in before else 0
                for tag in ("</think>", "</tool_call>", "</answer>"))
    answer = _unbox(before[start:])
    if not answer or "<think>" in answer or "<tool_call>" in answer:
        return None
    return answer


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    begin = i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
        i += 1
    return None


# ---------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One run of the protocol on one question, with what it cost."""

    messages: list[Message]
    answer: str | None
    resized: bool
    turns: list[Turn]
    visual_tokens_per_turn: list[int]
    full_res_visual_tokens: int
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    mode: str = "visionthink"
    fed_token_ids: list[int] = field(default_factory=list)
    """Every token the model read or wrote, in order (for checking against the rendering)."""
    zoomed: bool = False
    """A `zoom_image` turn delivered a region of the high-res view (`resized` stays: the whole view was delivered)."""
    zoom_box: tuple[float, float, float, float] | None = None
    """The box of the zoom call that ran, in the low-res view's pixels."""
    p_tool: float | None = None
    """The probability the model gave the tool path at its first-turn decision, normalised over answer and tool
    (`engines.tool_decision`); None where it was not recorded (no decision met, a forbidden call, another engine)."""
    tool_threshold: float | None = None
    """The threshold that chose the path (None: the model's own choice)."""

    @property
    def action(self) -> str:
        """What the episode did for its answer: "zoom", "resize" or "answer" (no image was delivered)."""
        return "zoom" if self.zoomed else "resize" if self.resized else "answer"

    @property
    def visual_tokens(self) -> int:
        """Visual tokens in context at the end (both images stay in context after a resize)."""
        return sum(self.visual_tokens_per_turn)

    @property
    def well_formed(self) -> bool:
        """The paper's format check over the whole episode."""
        if not self.turns or self.turns[-1].kind != "answer":
            return False
        expected = ["zoom", "answer"] if self.zoomed else ["resize", "answer"] if self.resized else ["answer"]
        return [t.kind for t in self.turns] == expected and all(t.well_formed for t in self.turns)

    @property
    def error(self) -> str | None:
        """None when the episode ended in a parsed, non-empty answer; else a one-line reason why not."""
        if self.answer is not None and self.answer.strip():
            return None
        if not self.turns:
            return "no assistant turn"
        last = self.turns[-1]
        if last.kind == "malformed":
            return f"final turn malformed: {last.error or 'unparseable'}"
        if last.kind == "resize":
            return "final turn called resize_image instead of answering (no turn left to answer in)"
        if last.kind == "zoom":
            return "final turn called zoom_image instead of answering (no turn left to answer in)"
        if self.answer is not None or last.answer is not None:
            return "final answer is empty"
        return "final turn gave no answer"

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record (no images)."""
        return {
            "answer": self.answer,
            "resized": self.resized,
            "action": self.action,
            "visual_tokens": self.visual_tokens,
            "full_res_visual_tokens": self.full_res_visual_tokens,
            "visual_tokens_per_turn": self.visual_tokens_per_turn,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "well_formed": self.well_formed,
            "error": self.error,
            "turns": [assistant_text(m) for m in self.messages if m["role"] == "assistant"],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "mode": self.mode,
            "p_tool": None if self.p_tool is None else round(self.p_tool, 6),
            "tool_threshold": "inf" if self.tool_threshold == math.inf else self.tool_threshold,
            **({"zoom_box": list(self.zoom_box)} if self.zoom_box is not None else {}),
        }


def make_episode(
    messages: list[Message],
    turns: list[Turn],
    count_visual_tokens: Callable[[Image.Image], int],
    full_res_visual_tokens: int,
    *,
    generated_tokens: int = 0,
    sequence_tokens: int = 0,
    seconds: dict[str, float] | None = None,
    mode: str = "visionthink",
    fed_token_ids: list[int] | None = None,
    answer_of: Callable[[list[Message], list[Turn]], str | None] | None = None,
    p_tool: float | None = None,
    tool_threshold: float | None = None,
) -> Episode:
    """The episode a conversation records, by one rule for every engine and for GRPO rollouts.

    `answer`: `answer_of(messages, turns)` where given (`ProtocolProfile.episode_answer`), else `final_answer`.
    `resized`: a tool turn delivered the high-res view; `zoomed`: a `zoom_image` turn delivered a region of it.
    Visual tokens: those of every image in the conversation (a zoom's crop counted as the model receives it).
    `prompt_tokens`: the conversation's `sequence_tokens` less what the model wrote.
    """
    zoomed = any(m["role"] == "tool" and m.get("name") == ZOOM_TOOL_NAME and _has_image(m) for m in messages)
    zoom_turns = [t for t in turns if t.kind == "zoom"]
    return Episode(
        messages=messages,
        answer=(answer_of or final_answer)(messages, turns),
        resized=any(m["role"] == "tool" and m.get("name") != ZOOM_TOOL_NAME and _has_image(m) for m in messages),
        turns=turns,
        visual_tokens_per_turn=[count_visual_tokens(image) for image in images_in(messages)],
        full_res_visual_tokens=full_res_visual_tokens,
        prompt_tokens=max(0, sequence_tokens - generated_tokens),
        generated_tokens=generated_tokens,
        seconds=dict(seconds or {}),
        mode=mode,
        fed_token_ids=list(fed_token_ids or []),
        zoomed=zoomed,
        zoom_box=zoom_turns[0].box if zoomed and zoom_turns else None,
        p_tool=p_tool,
        tool_threshold=tool_threshold,
    )


def final_answer(messages: list[Message], turns: list[Turn]) -> str | None:
    """This project's episode answer: the last turn's, when it is an answer (`extract_answer` of that turn)."""
    final = turns[-1] if turns else None
    return final.answer if final is not None and final.kind == "answer" else None


def _has_image(message: Message) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(part.get("type") == "image" for part in content)


def assistant_text(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")
