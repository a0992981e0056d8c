"""Protocol profiles: the strings, tool schema, chat template and parsing of one VisionThink conversation format.

- `visionthink` (the default): this project's protocol, `visionthink.protocol` (the tool rendered by the chat
  template from `protocol.RESIZE_TOOL`, a `tool` turn with the high-res image).
- `release`: the authors' released prompts byte for byte (`visionthink.protocol_release`, with their origin):
  the tool block inside the system prompt, their user template around the question, the tool's answer as a user
  turn with their follow-up text, their error turn, their call parsing and `<answer>` split, and no newline
  after an assistant's `<|im_end|>`. The released checkpoints were trained on this one. Its evaluation's views
  (the low view is the original image halved, then the processor's resize) and turn budget (8192 tokens).
- `visionthink-zoom` (issue 12, docs/zoom.md): `visionthink` plus a `zoom_image` tool whose box (low-res pixels) returns
  that region of the high-res view; the `zoom` and `oracle-zoom` modes run on it (`with_zoom`).

A profile is what the two-turn loop (`engines.base`), the renderers (`tokens.render_text`), the engines, eval,
serve and GRPO are given; `get_profile(None)` is `visionthink`, so code that passes none is unchanged.

Views (`views`): under every profile the full-resolution view is the processor's own resize of the image (Qwen2-VL's
smart resize, `images.high_view`). The low view is half of the full view, snapped (`visionthink`: a quarter of the
visual tokens wherever the full view's sides are even numbers of 28 px cells, as on the tiny model's images), or, under
`release`, the original image halved (sides rounded down, LANCZOS) and then the processor's resize, as the release's
evaluation (`scripts/vllm_tool.py`) and vLLM do.

Answers (`episode_answer`), in order of what is tried:
- `visionthink` (and its zoom variant): the final turn only, when it is an answer: the last complete
  `<answer>..</answer>` block of that turn, `\\boxed{}` inside it unwrapped; else a bare `\\boxed{}`; else the text
  before a lone `</answer>` (`protocol.extract_answer`). No answer when the final turn is a tool call or malformed.
- `release`: as its evaluation (`scripts/eval_examples/utils_pope.py`): the whole reply, every assistant turn joined
  as decoded with special tokens skipped, cut at its *first* `</answer>`, then what follows the last `<answer>` before
  that cut (`split("</answer>")[0].split("<answer>")[-1]`), stripped, `\\boxed{}` unwrapped for the graders. A reply
  without tags is its own answer, whatever its turns were. Where two answer blocks appear (a first turn that answers
  and calls, then an answer) the first one wins; ours takes the final turn's. The release's reward code (and its
  RealWorldQA filter) splits the other way round, `split("<answer>")[-1].split("</answer>")[0]`, which is what a
  release turn's own `Turn.answer` keeps and what GRPO rollouts (`train.grpo_env`) score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

from PIL import Image

from visionthink import protocol
from visionthink import protocol_release as release
from visionthink.images import PixelGrid, Views, make_views, zoom_crop
from visionthink.protocol import Message, Turn, image_part, text_part

__all__ = ["PROFILES", "RELEASE", "VISIONTHINK", "VISIONTHINK_ZOOM", "ProtocolProfile", "ReleaseProfile", "ZoomProfile",
           "get_profile", "with_zoom"]


@dataclass(frozen=True)
class ProtocolProfile:
    """One conversation format. The base class is the `visionthink` protocol (it calls `visionthink.protocol`)."""

    name: str
    system_prompt: str
    tool_schema: dict[str, Any]
    """The `resize_image` tool as the model is shown it."""
    tools_in_template: bool
    """True: the chat template renders `tool_schema` (`tools=[...]`); False: the system prompt already holds it."""
    template_file: str | None
    """A chat template in `visionthink/models` for this profile; None: the project's (`chat_template.jinja`)."""
    call_json: str | None
    """The canonical call's JSON (what follows `<tool_call>\\n`); None where the profile has no fixed call text."""
    turn_end_newline: bool
    """Whether a newline follows an assistant turn's `<|im_end|>` in the rendering."""
    source: str = "visionthink"
    max_new_tokens: int = 64
    """Tokens per assistant turn when none is given (engines' default `SamplingConfig`): 64 fits the tiny model's
    turns; the release's evaluation gives each turn 8192."""

    # ------------------------------------------------------------ rendering

    @cached_property
    def chat_template(self) -> str | None:
        """The template text to render with (None: the processor's own, the project's template)."""
        if self.template_file is None:
            return None
        return resources.files("visionthink.models").joinpath(self.template_file).read_text()

    def template_tools(self) -> list[dict[str, Any]] | None:
        """`tools=` for `apply_chat_template`."""
        return [self.tool_schema] if self.tools_in_template else None

    # ------------------------------------------------------------ turns

    def first_turn(self, question: str, image: Image.Image) -> list[Message]:
        """System prompt and the user turn holding the first (usually low-res) image."""
        return protocol.first_turn(question, image)

    def tool_turn(self, image: Image.Image) -> Message:
        """The tool's answer to a valid resize call: the high-res image."""
        return protocol.tool_turn(image)

    def error_turn(self, error: str) -> Message:
        """The tool's answer to a call that could not run."""
        return protocol.error_turn(error)

    def tool_reply(self, turn: Turn, text: str, high_res_image: Image.Image) -> Message | None:
        """The turn after an assistant turn: the image, an error turn, or None (the episode ends)."""
        if turn.kind == "resize":
            return self.tool_turn(high_res_image)
        if turn.kind == "malformed" and "<tool_call>" in text:
            return self.error_turn(turn.error or "malformed tool call")
        return None

    def parse_turn(self, text: str) -> Turn:
        """Classify an assistant turn as an answer, a resize call or malformed. Never raises."""
        return protocol.parse_turn(text)

    def resize_text(self, think: str) -> str:
        """The canonical resize-call turn."""
        return protocol.resize_text(think)

    def answer_text(self, think: str, answer: str) -> str:
        """The canonical direct-answer turn."""
        return protocol.answer_text(think, answer)

    offers_zoom = False
    """Whether the profile offers `zoom_image` (`ZoomProfile`); a class attribute, not a field."""

    halves_original = False
    """Whether the low view is the original image halved (the release's) instead of half the full view; a class
    attribute, not a field."""

    def views(self, image: Image.Image, grid: PixelGrid) -> Views:
        """Both views of an image under this profile (`images.make_views`)."""
        return make_views(image, grid, halve_original=self.halves_original)

    def episode_answer(self, messages: list[Message], turns: list[Turn]) -> str | None:
        """The episode's answer (`protocol.make_episode`): the final turn's, when it is an answer."""
        return protocol.final_answer(messages, turns)

    def check_turn(self, turn: Turn, views: Views) -> Turn:
        """The turn as the tool sees it once the views are known (a zoom outside the image becomes malformed)."""
        return turn

    def reply(self, turn: Turn, text: str, views: Views, grid: PixelGrid) -> Message | None:
        """`tool_reply` given both views (what a zoom call needs); the loop calls this one."""
        return self.tool_reply(turn, text, views.high)

    def trl_prompt(self, question: str) -> list[dict[str, Any]]:
        """`first_turn` for TRL's dataset rows: the image left out (TRL fills it in)."""
        messages = self.first_turn(question, Image.new("RGB", (1, 1)))
        user = messages[1]["content"]
        assert user[0]["type"] == "image" and len(protocol.images_in(messages)) == 1, "first_turn changed shape"
        return [
            {"role": m["role"], "content": "".join(p["text"] for p in m["content"] if p["type"] == "text")}
            for m in messages
        ]


@dataclass(frozen=True)
class ReleaseProfile(ProtocolProfile):
    """The authors' protocol (`visionthink.protocol_release`)."""

    halves_original = True

    def episode_answer(self, messages: list[Message], turns: list[Turn]) -> str | None:
        """The release evaluation's answer: `split("</answer>")[0].split("<answer>")[-1]` over the whole reply."""
        texts = [protocol.assistant_text(m) for m in messages if m["role"] == "assistant"]
        return _release_eval_answer("".join(_skip_special(text) for text in texts)) if texts else None

    def first_turn(self, question: str, image: Image.Image) -> list[Message]:
        text = release.USER_TEMPLATE.format(Question=_with_image_mark(question))
        before, after = text.split(release.IMAGE_MARK, 1)
        user = [part for part in (text_part(before), image_part(image), text_part(after)) if part.get("text") != ""]
        return [
            {"role": "system", "content": [text_part(self.system_prompt)]},
            {"role": "user", "content": user},
        ]

    def tool_turn(self, image: Image.Image) -> Message:
        return {"role": "tool", "name": protocol.TOOL_NAME, "content": [
            text_part(release.TOOL_RESPONSE_PREFIX), image_part(image),
            text_part(release.TOOL_RESPONSE_SUFFIX + release.FOLLOW_UP)]}

    def error_turn(self, error: str) -> Message:
        text = release.ERROR_PREFIX + error + release.ERROR_SUFFIX + release.ERROR_FOLLOW_UP
        return {"role": "tool", "name": protocol.TOOL_NAME, "content": [text_part(text)]}

    def tool_reply(self, turn: Turn, text: str, high_res_image: Image.Image) -> Message | None:
        if turn.kind == "resize":
            return self.tool_turn(high_res_image)
        if turn.kind == "malformed" and turn.error is not None and _CALL.search(_skip_special(text)):
            return self.error_turn(turn.error)
        return None

    def parse_turn(self, text: str) -> Turn:
        try:
            return _release_parse(text)
        except Exception as error:  # noqa: BLE001 - the parser must never raise on model output
            return Turn("malformed", error=f"unparseable turn ({type(error).__name__})")

    def trl_prompt(self, question: str) -> list[dict[str, Any]]:
        """Structured contents with an image placeholder where `first_turn` puts the image (TRL fills placeholders
        in place), so the rendered prompt equals `first_turn`'s."""
        messages = self.first_turn(question, Image.new("RGB", (1, 1)))
        return [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]}
                for m in messages]


def _with_image_mark(question: str) -> str:
    return question if release.IMAGE_MARK in question else release.QUESTION_PREFIX + question


_CALL = re.compile(release.CALL_PATTERN, re.DOTALL)
_JSON = re.compile(release.JSON_PATTERN)
_DIRECT_FORMAT = re.compile(r"^<think>.*</think>.*<answer>.*</answer>$", re.DOTALL)
_CALL_FORMAT = re.compile(r"^<think>.*</think>.*<tool_call>.*</tool_call>$", re.DOTALL)


def _skip_special(text: str) -> str:
    """The turn as the release reads it: decoded with `skip_special_tokens=True`."""
    for token in release.SPECIAL_TOKENS_SKIPPED:
        text = text.replace(token, "")
    return text


def _release_call_error(calls: list[str]) -> str | None:
    """None when the release would run the call, else its error information (`str(exception)`)."""
    try:
        objects = [json.loads(found) for call in calls for found in _JSON.findall(call)]
        _release_action(objects)
    except Exception as error:  # noqa: BLE001 - the release turns any failure into the error turn
        return str(error)
    return None


def _release_action(objects: list[Any]) -> str:
    """The release's check of the parsed calls, with its messages (an empty list fails as its code does)."""
    for obj in objects:
        action_type = obj["arguments"]["action"]
        if action_type not in release.ACTIONS:
            raise AssertionError(release.UNKNOWN_ACTION.format(action=action_type))
        if len(objects) != 1:
            raise AssertionError(release.ONE_CALL)
    return action_type  # unbound when no call parsed: the release's error is then Python's own


def _release_answer(text: str) -> str:
    """The reward code's `extract_answer_tags="split"`, then `\\boxed{}` unwrapped as the graders do."""
    inner = text.split("<answer>")[-1].split("</answer>")[0].strip()
    return protocol._unbox(inner)


def _release_eval_answer(reply: str) -> str:
    """The evaluation's split (`scripts/eval_examples/utils_pope.py`), then `\\boxed{}` unwrapped."""
    inner = reply.split("</answer>")[0].split("<answer>")[-1].strip()
    return protocol._unbox(inner)


def _release_parse(text: str) -> Turn:
    if not isinstance(text, str):
        return Turn("malformed", error="turn is not text")
    body = _skip_special(text)
    stripped = body.strip()
    thinks = protocol._THINK.findall(stripped)
    think = thinks[0].strip() if thinks else None
    calls = _CALL.findall(body)
    if calls:  # any complete call: the tool runs (or answers with an error), whatever else the turn says
        error = _release_call_error(calls)
        if error is not None:
            return Turn("malformed", think=think, error=error)
        # the release's own test (`and`, so one of the two tags counted once is enough)
        one_call = not (stripped.count("<tool_call>") != 1 and stripped.count("</tool_call>") != 1)
        well_formed = (bool(_CALL_FORMAT.match(stripped)) and stripped.count("<think>") == 1
                       and stripped.count("</think>") == 1 and one_call
                       and "<answer>" not in stripped and "</answer>" not in stripped)
        return Turn("resize", think=think, well_formed=well_formed)
    well_formed = (bool(_DIRECT_FORMAT.match(stripped)) and stripped.count("<think>") == 1
                   and stripped.count("</think>") == 1 and stripped.count("<answer>") == 1
                   and stripped.count("</answer>") == 1 and "<tool_call>" not in stripped
                   and "</tool_call>" not in stripped)
    return Turn("answer", answer=_release_answer(body), think=think, well_formed=well_formed)


@dataclass(frozen=True)
class ZoomProfile(ProtocolProfile):
    """`visionthink` with a second tool, `zoom_image` (issue 12): its box [x1, y1, x2, y2] is in the low-res view's
    pixels and the tool turn holds that region of the high-res view (`images.zoom_region`). The tool block lists
    `resize_image` then `zoom_image`; the user instruction names both; everything else is `visionthink`'s."""

    offers_zoom = True

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [self.tool_schema, protocol.ZOOM_TOOL] if self.tools_in_template else None

    def first_turn(self, question: str, image: Image.Image) -> list[Message]:
        return protocol.first_turn(question, image, protocol.ZOOM_USER_INSTRUCTION)

    def parse_turn(self, text: str) -> Turn:
        return protocol.parse_turn(text, zoom=True)

    def zoom_text(self, think: str, box) -> str:
        """The canonical zoom-call turn."""
        return protocol.zoom_text(think, box)

    def check_turn(self, turn: Turn, views: Views) -> Turn:
        return protocol.check_zoom_turn(turn, views.low.size)

    def tool_reply(self, turn: Turn, text: str, high_res_image: Image.Image) -> Message | None:
        if turn.kind == "zoom":
            raise ValueError("a zoom_image call needs both views: call reply(turn, text, views, grid)")
        return super().tool_reply(turn, text, high_res_image)

    def reply(self, turn: Turn, text: str, views: Views, grid: PixelGrid) -> Message | None:
        if turn.kind == "zoom":
            _, error = protocol.zoom_box(turn.box, views.low.size)
            if error is not None:  # a turn the loop did not pass through check_turn
                return self.error_turn(error)
            return protocol.zoom_turn(zoom_crop(turn.box, views, grid))
        return super().tool_reply(turn, text, views.high)


VISIONTHINK = ProtocolProfile(
    name="visionthink", system_prompt=protocol.SYSTEM_PROMPT, tool_schema=protocol.RESIZE_TOOL, tools_in_template=True,
    template_file=None, call_json=protocol.RESIZE_CALL_JSON, turn_end_newline=True,
)
RELEASE = ReleaseProfile(
    name="release", system_prompt=release.SYSTEM_PROMPT, tool_schema=release.TOOL_SCHEMA, tools_in_template=False,
    template_file="chat_template_release.jinja", call_json=protocol.RESIZE_CALL_JSON, turn_end_newline=False,
    source=release.SOURCE, max_new_tokens=release.MAX_NEW_TOKENS,
)
VISIONTHINK_ZOOM = ZoomProfile(
    name="visionthink-zoom", system_prompt=protocol.SYSTEM_PROMPT, tool_schema=protocol.RESIZE_TOOL,
    tools_in_template=True, template_file=None, call_json=protocol.RESIZE_CALL_JSON, turn_end_newline=True,
)
PROFILES: dict[str, ProtocolProfile] = {profile.name: profile for profile in (VISIONTHINK, RELEASE, VISIONTHINK_ZOOM)}
NAMES = tuple(PROFILES)


def get_profile(profile: str | ProtocolProfile | None = None) -> ProtocolProfile:
    """A profile by name (None: `visionthink`); a profile passes through."""
    if profile is None:
        return VISIONTHINK
    if isinstance(profile, ProtocolProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown protocol {profile!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def with_zoom(profile: str | ProtocolProfile | None = None) -> ProtocolProfile:
    """The profile that offers `zoom_image` for a given one: itself when it does, `visionthink-zoom` for
    `visionthink`; a ValueError for a profile with no zoom variant (`release`: the released checkpoints know one
    tool)."""
    found = get_profile(profile)
    if found.offers_zoom:
        return found
    if found.name == VISIONTHINK.name:
        return VISIONTHINK_ZOOM
    raise ValueError(f"protocol {found.name!r} has no zoom_image tool; zoom modes need {VISIONTHINK_ZOOM.name!r}")
