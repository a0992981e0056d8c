"""Protocol profiles: the strings, tool schema, chat template and parsing of one VisionThink conversation format.

- `visionthink` (the default): this project's protocol, `visionthink.protocol` (the tool rendered by the chat
  template from `tools.RESIZE.schema`, a `tool` turn with the high-res image).
- `release`: the authors' released prompts byte for byte (`visionthink.protocol_release`, with their origin):
  the tool block inside the system prompt, their user template around the question, the tool's answer as a user
  turn with their follow-up text, their error turn, their call parsing and `<answer>` split, and no newline
  after an assistant's `<|im_end|>`. The released checkpoints were trained on this one. Its evaluation's views
  (the low view is the original image halved, then the processor's resize) and turn budget (8192 tokens).
- `visionthink-zoom` (docs/zoom.md): `visionthink` plus a `zoom_image` tool whose box (low-res pixels) returns that
  region of the high-res view; the `zoom` and `oracle-zoom` modes run on it (`with_tools`).

A profile is its prompts plus a tuple of tools (`visionthink.tools`): the template renders their schemas, the parser
checks a call with its tool, the reply is the tool's image.

A profile is what the two-turn loop (`engines.base`), the renderers (`tokens.render_text`), the engines, eval,
serve and GRPO are given; `get_profile(None)` is `visionthink`.

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
import os
import re
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from visionthink import protocol
from visionthink import protocol_release as release
from visionthink.errors import VisionThinkError
from visionthink.images import PixelGrid, Views, make_views
from visionthink.protocol import Message, Turn, image_part, text_part
from visionthink.tools import RESIZE, ZOOM, Tool, ToolCall, codec

__all__ = ["PROFILES", "RELEASE", "VISIONTHINK", "VISIONTHINK_ZOOM", "ProtocolProfile", "ReleaseProfile",
           "get_profile", "with_tools"]


@dataclass(frozen=True)
class ProtocolProfile:
    """One conversation format. The base class is the `visionthink` protocol (it calls `visionthink.protocol`)."""

    name: str
    system_prompt: str
    tools: tuple[Tool, ...]
    """The tools the model is offered, in the order the tool block lists them."""
    tools_in_template: bool
    """True: the chat template renders the tools' schemas (`tools=[...]`); False: the system prompt holds them."""
    template_file: str | None
    """A chat template in `visionthink/models` for this profile; None: the project's (`chat_template.jinja`)."""
    turn_end_newline: bool
    """Whether a newline follows an assistant turn's `<|im_end|>` in the rendering."""
    instruction: str = protocol.USER_INSTRUCTION
    """What follows the question in the first user turn."""
    family: str = "visionthink"
    """Profiles of one family differ only in their tools (`with_tools` moves between them)."""
    source: str = "visionthink"
    max_new_tokens: int = 64
    """Tokens per assistant turn when none is given (engines' default `SamplingConfig`): 64 fits the tiny model's
    turns; the release's evaluation gives each turn 8192."""
    halves_original: bool = False
    """Whether the low view is the original image halved (the release's) instead of half the full view."""

    # ------------------------------------------------------------ tools

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)

    def tool(self, name: str) -> Tool:
        """The offered tool of that name (a KeyError for another)."""
        for tool in self.tools:
            if tool.name == name:
                return tool
        raise KeyError(f"no tool {name!r} in protocol {self.name!r}")

    def offers(self, name: str) -> bool:
        """Whether the model is offered the tool `name`."""
        return name in self.tool_names

    def lacks(self, names: tuple[str, ...]) -> list[str]:
        """Those of the tools `names` this profile does not offer."""
        return [name for name in names if not self.offers(name)]


    @property
    def call_json(self) -> str | None:
        """The JSON of the first tool's call when its text never varies (what follows `<tool_call>\\n`: the engine
        feeds it as a guess); None otherwise."""
        first = self.tools[0] if self.tools else None
        if first is None or first.fixed_arguments is None:
            return None
        return codec.call_json(first.name, first.fixed_arguments)

    # ------------------------------------------------------------ rendering

    @cached_property
    def chat_template(self) -> str | None:
        """The template text to render with (None: the processor's own, the project's template)."""
        if self.template_file is None:
            return None
        return resources.files("visionthink.models").joinpath(self.template_file).read_text()

    def template_tools(self) -> list[dict[str, Any]] | None:
        """`tools=` for `apply_chat_template`."""
        return [tool.schema for tool in self.tools] if self.tools_in_template else None

    # ------------------------------------------------------------ turns

    def first_turn(self, question: str, image: Image.Image) -> list[Message]:
        """System prompt and the user turn holding the first (usually low-res) image."""
        return protocol.first_turn(question, image, self.instruction)

    def tool_turn(self, tool: Tool, image: Image.Image) -> Message:
        """The tool's answer to a call that ran: its image."""
        return protocol.tool_turn(tool, image)

    def error_turn(self, error: str) -> Message:
        """The tool's answer to a call that could not run."""
        return protocol.error_turn(error)

    def wrote_a_call(self, text: str, turn: Turn) -> bool:
        """Whether a malformed turn tried to call a tool (it gets an error turn; otherwise the episode ends)."""
        return codec.CALL_OPEN in text

    def parse_turn(self, text: str) -> Turn:
        """Classify an assistant turn as an answer, a call of an offered tool or malformed. Never raises."""
        return protocol.parse_turn(text, self.tools)

    def answer_text(self, think: str, answer: str) -> str:
        """The canonical direct-answer turn."""
        return protocol.answer_text(think, answer)

    def call_text(self, think: str, tool_name: str, arguments: dict[str, Any]) -> str:
        """The canonical turn calling an offered tool."""
        return protocol.call_text(think, self.tool(tool_name), arguments)

    def call_turns(self, think: str, tool_name: str, arguments: dict[str, Any], views: Views,
                   grid: PixelGrid | None = None) -> list[Message]:
        """The canonical call of an offered tool and the tool's turn after it (what SFT teaches)."""
        tool = self.tool(tool_name)
        checked, error = tool.check(arguments)
        if error is not None:
            raise ValueError(f"a canonical {tool_name} call cannot run: {error}")
        return [protocol.assistant_turn(self.call_text(think, tool_name, arguments)),
                self.tool_turn(tool, tool.image(checked, views, grid))]

    def views(self, image: Image.Image, grid: PixelGrid) -> Views:
        """Both views of an image under this profile (`images.make_views`)."""
        return make_views(image, grid, halve_original=self.halves_original)

    def episode_answer(self, messages: list[Message], turns: list[Turn]) -> str | None:
        """The episode's answer (`protocol.make_episode`): the final turn's, when it is an answer."""
        return protocol.final_answer(messages, turns)

    def check_turn(self, turn: Turn, views: Views) -> Turn:
        """The turn as the tool sees it once the views are known (a zoom outside the image becomes malformed)."""
        if turn.call is None:
            return turn
        error = self.tool(turn.call.name).check_in_view(turn.call.arguments, views)
        return turn if error is None else Turn("malformed", think=turn.think, error=error)

    def reply(self, turn: Turn, text: str, views: Views, grid: PixelGrid) -> Message | None:
        """The turn after an assistant turn: the called tool's image, an error turn for a call that cannot run, or
        None (the episode ends)."""
        if turn.call is not None:
            tool = self.tool(turn.call.name)
            error = tool.check_in_view(turn.call.arguments, views)
            if error is not None:  # a turn the loop did not pass through check_turn
                return self.error_turn(error)
            return self.tool_turn(tool, tool.image(turn.call.arguments, views, grid))
        if turn.kind == "malformed" and self.wrote_a_call(text, turn):
            return self.error_turn(turn.error or "malformed tool call")
        return None

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

    def tool_turn(self, tool: Tool, image: Image.Image) -> Message:
        return {"role": "tool", "name": tool.name, "content": [
            text_part(release.TOOL_RESPONSE_PREFIX), image_part(image),
            text_part(release.TOOL_RESPONSE_SUFFIX + release.FOLLOW_UP)]}

    def error_turn(self, error: str) -> Message:
        text = release.ERROR_PREFIX + error + release.ERROR_SUFFIX + release.ERROR_FOLLOW_UP
        return {"role": "tool", "name": RESIZE.name, "content": [text_part(text)]}

    def wrote_a_call(self, text: str, turn: Turn) -> bool:
        return turn.error is not None and bool(_CALL.search(_skip_special(text)))

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
    """The release's check of the parsed calls, with its messages. With no call parsed, its code reads a variable
    it never set: the error turn then holds Python's message for that (`release.NO_CALL_ERROR`)."""
    if not objects:
        raise UnboundLocalError(release.NO_CALL_ERROR)
    for obj in objects:
        action_type = obj["arguments"]["action"]
        if action_type not in release.ACTIONS:
            raise AssertionError(release.UNKNOWN_ACTION.format(action=action_type))
        if len(objects) != 1:
            raise AssertionError(release.ONE_CALL)
    return action_type


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
        return Turn("resize", think=think, well_formed=well_formed, call=ToolCall(RESIZE.name, {"action": "resize"}))
    well_formed = (bool(_DIRECT_FORMAT.match(stripped)) and stripped.count("<think>") == 1
                   and stripped.count("</think>") == 1 and stripped.count("<answer>") == 1
                   and stripped.count("</answer>") == 1 and "<tool_call>" not in stripped
                   and "</tool_call>" not in stripped)
    return Turn("answer", answer=_release_answer(body), think=think, well_formed=well_formed)


VISIONTHINK = ProtocolProfile(
    name="visionthink", system_prompt=protocol.SYSTEM_PROMPT, tools=(RESIZE,), tools_in_template=True,
    template_file=None, turn_end_newline=True,
)
RELEASE = ReleaseProfile(
    name="release", system_prompt=release.SYSTEM_PROMPT, tools=(replace(RESIZE, shown_as=release.TOOL_SCHEMA),),
    tools_in_template=False, template_file="chat_template_release.jinja", turn_end_newline=False, family="release",
    source=release.SOURCE, max_new_tokens=release.MAX_NEW_TOKENS, halves_original=True,
)
VISIONTHINK_ZOOM = ProtocolProfile(
    name="visionthink-zoom", system_prompt=protocol.SYSTEM_PROMPT, tools=(RESIZE, ZOOM), tools_in_template=True,
    template_file=None, turn_end_newline=True, instruction=protocol.ZOOM_USER_INSTRUCTION,
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


def with_tools(profile: str | ProtocolProfile | None, names: tuple[str, ...]) -> ProtocolProfile:
    """The profile of `profile`'s family that offers exactly the tools `names` (itself when it does); a ValueError
    naming what is missing when no registered profile does."""
    found = get_profile(profile)
    if found.tool_names == tuple(names):
        return found
    for candidate in PROFILES.values():
        if candidate.family == found.family and candidate.tool_names == tuple(names):
            return candidate
    missing = found.lacks(names)
    what = f"has no {' or '.join(missing)} tool" if missing else f"has no variant with only {', '.join(names)}"
    raise ValueError(f"protocol {found.name!r} {what}")


DECLARATION_FILE = "visionthink.json"
"""A model folder's declaration of the profile it was trained on: `{"protocol": "visionthink-zoom"}`."""


def declared_profile(model_dir: str | os.PathLike | None) -> ProtocolProfile:
    """The profile a model folder declares (`DECLARATION_FILE`; None: the default model's, `default_model_dir`),
    `visionthink` where it declares none (folders written before declarations, a hub id)."""
    if model_dir is None:
        from visionthink.models.loading import default_model_dir

        model_dir = default_model_dir()
    path = Path(model_dir) / DECLARATION_FILE
    if not path.is_file():
        return VISIONTHINK
    try:
        name = json.loads(path.read_text())["protocol"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a declaration of the form {{\"protocol\": NAME}}: {error}") from None
    return get_profile(name)


def declare_profile(model_dir: str | os.PathLike, profile: str | ProtocolProfile) -> None:
    """Write the model folder's declaration (after training under `profile`)."""
    (Path(model_dir) / DECLARATION_FILE).write_text(json.dumps({"protocol": get_profile(profile).name}) + "\n")


def missing_tools_error(mode_name: str, mode_tools: tuple[str, ...], profile: ProtocolProfile) -> str | None:
    """The one-line refusal of a mode whose tools the model's profile lacks (None: it offers them)."""
    missing = profile.lacks(mode_tools)
    if not missing:
        return None
    return (f"mode {mode_name} needs the {' and '.join(missing)} tool, which this model's protocol {profile.name!r} "
            f"does not offer (a model trained with it declares it in its {DECLARATION_FILE})")


def mode_profile(profile: ProtocolProfile, mode) -> ProtocolProfile:
    """The profile a mode (`modes.Mode`) runs on for a model trained under `profile`: `profile` itself for a mode that
    never calls (full, low: the prompts the model was trained on, calls banned), else `profile` restricted to the
    mode's tools; a VisionThinkError with the one-line refusal (`missing_tools_error`) when it lacks one."""
    if mode.calls == "never":
        return profile
    error = missing_tools_error(mode.name, mode.tools, profile)
    if error is not None:
        raise VisionThinkError(error)
    return with_tools(profile, mode.tools)
