"""The VisionThink loop, written once: every engine is a backend that generates one assistant turn.

`run_episodes(backend, requests, mode)` runs a mode (`visionthink.modes`): it makes the two views, asks the backend
for each turn of a batch, applies the protocol (parsing, the oracle's forced call, the tool's reply) and builds the
`protocol.Episode`s. A backend only turns conversations into assistant text: `TransformersEngine` (local, KV cache
kept across turns), `VLLMEngine` (in-process vLLM) and `RemoteEngine` (any OpenAI-compatible server). Its profile
(`backend.protocol`) must offer the mode's tools (`profiles.with_tools` picks that profile).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from visionthink import protocol
from visionthink.errors import VisionThinkError
from visionthink.images import ImageSource, PixelGrid, Views, load_image
from visionthink.modes import Mode, get_mode
from visionthink.profiles import get_profile


@dataclass
class Request:
    """One question about one image. `needs_high_res` and `right_action` are only read by the oracle modes, `box`
    only where an oracle zooms."""

    image: ImageSource
    question: str
    needs_high_res: bool | None = None
    box: tuple[float, float, float, float] | None = None
    """The region that holds the answer, (x1, y1, x2, y2) in the pixels of the image as given (x2, y2 exclusive)."""
    right_action: str | None = None
    """The cheapest action that shows the answer ("answer", "zoom" or "resize"), for `oracle-ladder`."""
    tool_threshold: float | None = None
    """Call the tool when P(tool) >= this at the first-turn decision (`engines.tool_decision`; 0: always, above 1:
    never); None: the model's own choice. Only where the mode lets the model decide (`visionthink`, `zoom`)."""
    escalate_below: float | None = None
    """Withdraw a first-turn answer whose confidence (the least probability the model gave a token of it,
    `engines.confidence`) is under this and call `resize_image` in its place: the model answers again on the full
    view. None: answers stand. Only where the mode lets the model decide."""


@dataclass
class Generated:
    """One assistant turn as a backend wrote it."""

    text: str
    """The turn's text, end marker removed."""
    generated_tokens: int
    sequence_tokens: int = 0
    """The conversation's length in tokens once this turn is written (0: unknown)."""
    fed_token_ids: list[int] | None = None
    """Every token the model read or wrote so far, where the backend knows them."""
    seconds: float | None = None
    """This row's own time for the turn; None: the batch's time is shared out evenly."""
    p_tool: float | None = None
    """P(tool) at this turn's decision between answering and calling the tool (None: not met, or not recorded)."""
    answer_confidence: float | None = None
    """The least probability the model gave a token of this turn's answer (None: no answer, or not recorded)."""


class Session(Protocol):
    """One batch's state across its turns (a KV cache, cached image URLs, ...)."""

    def generate(self, rows: list[int], conversations: list[list[protocol.Message]],
                 forbid_call: list[bool], tool_thresholds: list[float | None] | None = None,
                 answer_confidence: bool = False) -> list[Generated]:
        """The next assistant turn of each conversation. `rows` name the batch rows still going (a later
        call passes a subset, in order); `forbid_call[i]` keeps `<tool_call>` out of that turn. `tool_thresholds`
        (first turns only) asks for P(tool), and the path by the row's threshold where it is not None: only a
        backend with `decides_by_threshold` is given one. `answer_confidence` (first turns only) asks for each
        answer's confidence: only a backend with `records_confidence` is asked."""
        ...


class Backend(Protocol):
    """What the loop needs from an engine (optionally also `protocol`, a `profiles.ProtocolProfile`; none means
    `visionthink`)."""

    grid: PixelGrid
    batch_size: int

    def session(self) -> Session: ...


def oracle_aims(mode: Mode, request) -> bool:
    """Whether the oracle's tool for `request` is aimed with its true box."""
    from visionthink.tools import TOOLS

    tool = mode.oracle_tool_for(request)
    return tool is not None and TOOLS[tool].oracle_needs_box


def check_mode(mode: str | Mode, requests: list, profile=None) -> Mode:
    """The mode, after refusing an unknown one, an oracle without its label (`Mode.oracle_label`) on every request (or
    without the true `box` where its tool needs one) and a profile that lacks one of the mode's tools, before any
    work."""
    try:
        mode = get_mode(mode)
    except ValueError as error:
        raise ValueError(str(error)) from None
    if mode.calls == "oracle" and any(getattr(r, mode.oracle_label, None) is None for r in requests):
        raise ValueError(f"{mode.name} mode needs `{mode.oracle_label}` on every request")
    if mode.needs_box and any(getattr(r, "box", None) is None and oracle_aims(mode, r) for r in requests):
        raise ValueError(f"{mode.name} mode needs `box` on every request its oracle zooms into")
    profile = get_profile(profile)
    missing = profile.lacks(mode.tools)
    if missing and mode.calls != "never":
        raise ValueError(f"{mode.name} mode needs the {' and '.join(missing)} tool, which protocol {profile.name!r} "
                         "does not offer")
    for request in requests:
        check_threshold(getattr(request, "tool_threshold", None))
        check_escalation(getattr(request, "escalate_below", None))
    if mode.decides and profile.lacks(("resize_image",)) and any(
            getattr(r, "escalate_below", None) is not None for r in requests):
        raise ValueError(f"escalating unsure answers calls resize_image, which protocol {profile.name!r} does not "
                         "offer")
    return mode


def check_unit(value: float | None, what: str) -> float | None:
    """`value` as a float in [0, 1] (None passes), or a ValueError naming `what`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"the {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_threshold(value: float | None) -> float | None:
    """A tool threshold as given, or a clear error: a number in [0, 1] (0: always call the tool, 1: only when
    certain). `math.inf` (never call it) is let through for the accuracy-vs-tokens curve."""
    return math.inf if value == math.inf and not isinstance(value, bool) else check_unit(value, "tool threshold")


def check_thresholds(backend, requests: list) -> None:
    """Refuse a tool threshold on a backend that cannot choose the path by one (a clear error, never ignored)."""
    if not getattr(backend, "decides_by_threshold", False) and any(
            getattr(r, "tool_threshold", None) is not None for r in requests):
        raise VisionThinkError(f"a tool threshold needs the transformers engine; {type(backend).__name__} cannot "
                               "read P(tool) while it decodes")
    if not getattr(backend, "records_confidence", False) and any(
            getattr(r, "escalate_below", None) is not None for r in requests):
        raise VisionThinkError("escalating unsure answers needs an engine that reads the answer's token probabilities "
                               f"(transformers, vllm, remote); {type(backend).__name__} cannot")


def check_escalation(value: float | None) -> float | None:
    """An answer-confidence threshold as given, or a clear error: a number in [0, 1] (0: no answer is withdrawn, 1:
    every answer short of certain is)."""
    return check_unit(value, "answer-confidence threshold")


def run_episodes(backend: Backend, requests: list, mode: str | Mode = "visionthink",
                 progress=None) -> list[protocol.Episode]:
    """Episodes for all requests (objects with `image`, `question`, `needs_high_res`), in order."""
    mode = check_mode(mode, requests, getattr(backend, "protocol", None))
    check_thresholds(backend, requests)
    episodes: list[protocol.Episode] = []
    for start in range(0, len(requests), max(1, backend.batch_size)):
        batch = requests[start : start + max(1, backend.batch_size)]
        episodes.extend(_run_batch(backend, batch, mode))
        if progress is not None:
            progress.update(len(batch))
    return episodes


@dataclass
class _Row:
    request: object
    views: Views
    messages: list[protocol.Message]
    turns: list[protocol.Turn] = field(default_factory=list)
    generated_tokens: int = 0
    sequence_tokens: int = 0
    fed_token_ids: list[int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    grid: PixelGrid = field(default_factory=PixelGrid)
    source_size: tuple[int, int] | None = None
    """The loaded image's (width, height): the frame of `Request.box`."""
    p_tool: float | None = None
    answer_confidence: float | None = None
    escalated: bool = False


def _run_batch(backend: Backend, requests: list, mode: Mode) -> list[protocol.Episode]:
    began = time.perf_counter()
    profile = get_profile(getattr(backend, "protocol", None))
    rows = []
    for request in requests:
        image = load_image(request.image, grid=backend.grid)
        views = profile.views(image, backend.grid)
        first_image = views.high if mode.first_view == "high" else views.low
        rows.append(_Row(request, views, profile.first_turn(request.question, first_image), grid=backend.grid,
                         source_size=image.size))
    prepare = (time.perf_counter() - began) / len(rows)
    for row in rows:
        row.seconds["prepare"] = prepare
    session = backend.session()
    active = list(range(len(rows)))
    for turn_index in range(protocol.MAX_ASSISTANT_TURNS):
        turn_began = time.perf_counter()
        forbid = [mode.forbids_call(rows[i].request, turn_index) for i in active]
        options = {}
        if turn_index == 0 and getattr(backend, "decides_by_threshold", False):
            options["tool_thresholds"] = [getattr(rows[i].request, "tool_threshold", None) if mode.decides else None
                                          for i in active]
        if turn_index == 0 and getattr(backend, "records_confidence", False):
            options["answer_confidence"] = True
        outputs = session.generate(active, [rows[i].messages for i in active], forbid, **options)
        shared = (time.perf_counter() - turn_began) / len(active)
        going_on = []
        for index, output in zip(active, outputs, strict=True):
            row = rows[index]
            row.seconds[f"turn{turn_index + 1}"] = shared if output.seconds is None else output.seconds
            row.generated_tokens += output.generated_tokens
            row.sequence_tokens = output.sequence_tokens
            if output.fed_token_ids is not None:
                row.fed_token_ids = output.fed_token_ids
            if turn_index == 0:
                row.p_tool = output.p_tool
                row.answer_confidence = output.answer_confidence
            if _take_turn(row, output.text, mode, turn_index, profile):
                going_on.append(index)
        active = going_on
        if not active:
            break
    grid = backend.grid
    return [
        protocol.make_episode(
            row.messages, row.turns, count_visual_tokens=lambda image: grid.tokens(*image.size),
            full_res_visual_tokens=grid.tokens(*row.views.high.size), generated_tokens=row.generated_tokens,
            sequence_tokens=row.sequence_tokens, seconds=row.seconds, mode=mode.name,
            fed_token_ids=row.fed_token_ids, answer_of=profile.episode_answer, p_tool=row.p_tool,
            tool_threshold=getattr(row.request, "tool_threshold", None) if mode.decides else None,
            answer_confidence=row.answer_confidence, escalated=row.escalated,
            escalate_below=getattr(row.request, "escalate_below", None) if mode.decides else None,
        )
        for row in rows
    ]


def _take_turn(row: _Row, text: str, mode: Mode, turn_index: int, profile=None) -> bool:
    """Record an assistant turn and the tool's reply to it; True when the model gets another turn."""
    profile = get_profile(profile)
    turn = profile.parse_turn(text)
    if turn_index == 0 and mode.decides and _unsure(row, turn):
        resize = profile.tool("resize_image")
        text = profile.call_text(turn.think or "", resize.name, dict(resize.fixed_arguments or {}))  # the think kept
        turn = profile.parse_turn(text)
        row.escalated = True
    if oracle_tool := mode.oracle_calls(row.request, turn_index):
        tool = profile.tool(oracle_tool)
        arguments = tool.oracle_arguments(row.request, row.views, row.source_size or row.views.high.size)
        if turn.call is None or turn.call.name != tool.name or turn.call.arguments != tool.check(arguments)[0]:
            text = profile.call_text(turn.think or "", tool.name, arguments)  # the oracle calls, keeping the reasoning
            turn = profile.parse_turn(text)
    turn = profile.check_turn(turn, row.views)
    row.messages.append(protocol.assistant_turn(text))
    row.turns.append(turn)
    if turn_index + 1 == protocol.MAX_ASSISTANT_TURNS or mode.calls == "never":
        return False
    reply = profile.reply(turn, text, row.views, row.grid)
    if reply is None:
        return False
    row.messages.append(reply)
    return True


def _unsure(row: _Row, turn: protocol.Turn) -> bool:
    """Whether `turn` answers with less confidence than its request's `escalate_below`."""
    threshold = getattr(row.request, "escalate_below", None)
    return (threshold is not None and turn.kind == "answer" and row.answer_confidence is not None
            and row.answer_confidence < threshold)


SPECIAL_MARKERS = ("<|", "|>", "<tool_call>", "</tool_call>")
BANNED_BIAS = -100.0
"""The `logit_bias` that keeps a token out of a turn: vLLM's (and OpenAI's) lowest."""


def stop_ids(tokenizer) -> list[int]:
    """The ids of the tokens that end an assistant turn (`protocol.END_MARKERS`), in that order."""
    return [tokenizer.convert_tokens_to_ids(marker) for marker in protocol.END_MARKERS]


def never_write_ids(tokenizer) -> list[int]:
    """Token ids a model must not write: vision placeholders and `<|im_start|>`, plus ordinary tokens
    whose text spells a special token (a BPE may learn such merges); re-encoding either would break
    the next turn's rendering."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in (
        "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")}
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for token, index in tokenizer.get_vocab().items():
        if index not in special and any(marker in token for marker in SPECIAL_MARKERS):
            ids.add(index)
    return sorted(ids)
