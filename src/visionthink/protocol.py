"""The VisionThink conversation, defined once for training, inference, evaluation and serving.

Turn 1: system prompt listing the profile's tools (`tools`), user turn with the low-res image.
The model answers (`<think>..</think><answer>..</answer>`) or calls a tool. On a valid
call, a tool turn carries the tool's image and the model answers. At most 2 assistant turns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from visionthink.tools import RESIZE, TOOLS, Tool, codec
from visionthink.tools.codec import BadCall, ToolCall

MAX_ASSISTANT_TURNS = 2
SYSTEM_PROMPT = "You are a helpful assistant."
USER_INSTRUCTION = (
    "Think in <think> </think>, then give the final answer in <answer> </answer>. "
    "If the image is too small to answer, call resize_image instead of answering."
)
ZOOM_USER_INSTRUCTION = (
    "Think in <think> </think>, then give the final answer in <answer> </answer>. "
    "If a small detail is unreadable, call zoom_image on its region; if the whole image is too small, "
    "call resize_image. Call a tool instead of answering."
)

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


def tool_turn(tool: Tool, image: Image.Image) -> Message:
    """The tool's answer to a call that ran: its image and how to go on."""
    return {"role": "tool", "name": tool.name, "content": [image_part(image), text_part(tool.response_text)]}


def error_turn(error: str) -> Message:
    """The tool's answer to a call that cannot run."""
    return {"role": "tool", "name": RESIZE.name, "content": [text_part(f"Error: {error}")]}


def answer_text(think: str, answer: str) -> str:
    """The canonical direct-answer turn."""
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def call_text(think: str, tool: Tool, arguments: dict[str, Any]) -> str:
    """The canonical turn that calls `tool` with `arguments`."""
    return f"<think>{think}</think>\n{codec.call_block(tool.name, tool.canonical(arguments))}"


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
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
"""What ends an assistant turn (the first is the chat format's, the second the tokenizer's end of text)."""


@dataclass(frozen=True)
class Turn:
    """What one assistant turn says.

    `well_formed` is the paper's format check for the turn: one think block, then exactly
    one answer block (direct answer) or exactly one tool call with exactly its arguments, nothing else.
    """

    kind: TurnKind
    answer: str | None = None
    think: str | None = None
    well_formed: bool = False
    error: str | None = None
    call: ToolCall | None = None
    """A tool call's tool and checked arguments (the kind is the tool's `kind`)."""

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """A zoom call's box, [x1, y1, x2, y2] in the low-res view's pixels."""
        box = self.call.arguments.get("box") if self.call is not None else None
        return None if box is None else tuple(float(v) for v in box)


def parse_turn(text: str, tools: Sequence[Tool] = (RESIZE,)) -> Turn:
    """Classify an assistant turn as an answer, a call of one of `tools` or malformed. Never raises."""
    try:
        return _parse_turn(text, tools)
    except Exception as error:  # noqa: BLE001 - the parser must never raise on model output
        return Turn("malformed", error=f"unparseable turn ({type(error).__name__})")


def _parse_turn(text: str, tools: Sequence[Tool]) -> Turn:
    if not isinstance(text, str):
        return Turn("malformed", error="turn is not text")
    body = text.strip()
    for marker in END_MARKERS:
        body = body.removesuffix(marker).rstrip()
    thinks = _THINK.findall(body)
    think = thinks[0].strip() if thinks else None
    outside = _THINK.sub("", body, count=1)  # tags merely mentioned while thinking do not count
    calls = codec.call_blocks(outside)
    answers = _ANSWER.findall(outside)
    starts_with_think = body.startswith("<think>") and len(thinks) == 1
    if calls and answers:
        return Turn("malformed", think=think, error="turn both answers and calls a tool")
    if calls:
        if len(calls) > 1:
            return Turn("malformed", think=think, error="more than one tool call in a turn")
        clean = starts_with_think and not codec.without_calls(outside).strip()
        return _call_turn(calls[0], think, clean, tools)
    if codec.CALL_OPEN in outside:
        return Turn("malformed", think=think, error="unterminated <tool_call>")
    answer = extract_answer(outside)
    if answer is None:
        return Turn("malformed", think=think, error="no <answer> and no tool call")
    rest = _ANSWER.sub("", outside).strip()
    well_formed = starts_with_think and len(answers) == 1 and not rest and "<think>" not in answers[0]
    return Turn("answer", answer=answer, think=think, well_formed=well_formed)


def _call_turn(payload: str, think: str | None, clean: bool, tools: Sequence[Tool]) -> Turn:
    """A call's turn: the tool it names among `tools`, its arguments checked by that tool. `clean`: the turn is one
    think block and the call, nothing else."""
    decoded = codec.decode_call(payload)
    by_name = {tool.name: tool for tool in tools}
    name = decoded.name
    if name is not None and name not in by_name:
        names = [tool.name for tool in tools]
        offered = (f"the only tool is {names[0]}" if len(names) == 1
                   else f"the tools are {', '.join(names[:-1])} and {names[-1]}")
        return Turn("malformed", think=think, error=f"unknown tool {name[:40]!r}; {offered}")
    if isinstance(decoded, BadCall):
        return Turn("malformed", think=think, error=decoded.error)
    tool = by_name[decoded.name]
    arguments, error = tool.check(decoded.arguments)
    if error is not None:
        return Turn("malformed", think=think, error=error)
    return Turn(tool.kind, think=think, well_formed=clean and tool.exact(decoded.arguments),
                call=ToolCall(tool.name, arguments))


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
    turns: list[Turn]
    visual_tokens_per_turn: list[int]
    full_res_visual_tokens: int
    calls: list[ToolCall] = field(default_factory=list)
    """The tool calls that ran (a tool turn with the tool's image followed them), in order."""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    mode: str = "visionthink"
    fed_token_ids: list[int] = field(default_factory=list)
    """Every token the model read or wrote, in order (for checking against the rendering)."""
    p_tool: float | None = None
    """The probability the model gave the tool path at its first-turn decision, normalised over answer and tool
    (`engines.tool_decision`); None where it was not recorded (no decision met, a forbidden call, another engine)."""
    tool_threshold: float | None = None
    """The threshold that chose the path (None: the model's own choice)."""
    answer_confidence: float | None = None
    """The least probability the model gave a token of its first turn's answer (`engines.confidence`); None where
    that turn did not answer or the engine does not record it."""
    escalate_below: float | None = None
    """The answer-confidence threshold the episode ran under (None: answers stand)."""
    escalated: bool = False
    """The first turn's answer was under `escalate_below`: withdrawn, and `resize_image` called in its place."""

    @property
    def action(self) -> str:
        """What the episode did for its answer: the kind of the last tool that ran ("resize", "zoom"), else
        "answer"."""
        return TOOLS[self.calls[-1].name].kind if self.calls else "answer"

    @property
    def resized(self) -> bool:
        """A `resize_image` call delivered the full-resolution view."""
        return self.action == "resize"

    @property
    def zoomed(self) -> bool:
        """A `zoom_image` call delivered a region of the full-resolution view."""
        return self.action == "zoom"

    @property
    def zoom_box(self) -> tuple[float, float, float, float] | None:
        """The box of the zoom call that ran, in the low-res view's pixels."""
        return tuple(float(v) for v in self.calls[-1].arguments["box"]) if self.zoomed else None

    @property
    def visual_tokens(self) -> int:
        """Visual tokens in context at the end (both images stay in context after a resize)."""
        return sum(self.visual_tokens_per_turn)

    @property
    def well_formed(self) -> bool:
        """The paper's format check over the whole episode."""
        if not self.turns or self.turns[-1].kind != "answer":
            return False
        expected = ["answer"] if self.action == "answer" else [self.action, "answer"]
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
        if last.call is not None:
            return f"final turn called {last.call.name} instead of answering (no turn left to answer in)"
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
            "tool_threshold": "inf" if self.tool_threshold == float("inf") else self.tool_threshold,
            "answer_confidence": None if self.answer_confidence is None else round(self.answer_confidence, 6),
            "escalate_below": self.escalate_below,
            "escalated": self.escalated,
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
    answer_confidence: float | None = None,
    escalate_below: float | None = None,
    escalated: bool = False,
) -> Episode:
    """The episode a conversation records, by one rule for every engine and for GRPO rollouts.

    `answer`: `answer_of(messages, turns)` where given (`ProtocolProfile.episode_answer`), else `final_answer`.
    `calls`: the calls of the assistant turns that a tool turn with an image followed (`turns[i]` is the i-th
    assistant turn's). Visual tokens: those of every image in the conversation (a zoom's crop counted as the model
    receives it). `prompt_tokens`: the conversation's `sequence_tokens` less what the model wrote.
    """
    return Episode(
        messages=messages,
        answer=(answer_of or final_answer)(messages, turns),
        turns=turns,
        visual_tokens_per_turn=[count_visual_tokens(image) for image in images_in(messages)],
        full_res_visual_tokens=full_res_visual_tokens,
        calls=calls_that_ran(messages, turns),
        prompt_tokens=max(0, sequence_tokens - generated_tokens),
        generated_tokens=generated_tokens,
        seconds=dict(seconds or {}),
        mode=mode,
        fed_token_ids=list(fed_token_ids or []),
        p_tool=p_tool,
        tool_threshold=tool_threshold,
        answer_confidence=answer_confidence,
        escalate_below=escalate_below,
        escalated=escalated,
    )


def calls_that_ran(messages: list[Message], turns: list[Turn]) -> list[ToolCall]:
    """The calls of the assistant turns that a tool turn holding an image answered."""
    ran, index = [], -1
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        index += 1
        reply = messages[position + 1] if position + 1 < len(messages) else None
        turn = turns[index] if index < len(turns) else None
        if turn is not None and turn.call is not None and reply is not None and reply["role"] == "tool" \
                and _has_image(reply):
            ran.append(turn.call)
    return ran


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
