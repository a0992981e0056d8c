"""Tests for `visionthink.protocol`: turn parsing, answer extraction and episode bookkeeping."""

from __future__ import annotations

import json

import pytest
from conftest import resize_text  # tests/ is on sys.path
from hypothesis import given, settings
from hypothesis import strategies as st

from visionthink.protocol import (
    Episode,
    Turn,
    answer_text,
    extract_answer,
    parse_turn,
)
from visionthink.tools import RESIZE, ToolCall, codec

TOOL_NAME = RESIZE.name

KINDS = {"answer", "resize", "malformed"}


def call(payload: object) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"<think>too small</think>\n<tool_call>\n{text}\n</tool_call>"


# ---------------------------------------------------------------- canonical turns


@pytest.mark.parametrize(
    ("think", "answer"),
    [("The shape is red.", "red"), ("", "3"), ("multi\nline\nthinking", "a long answer, with commas")],
)
def test_canonical_answer_turn(think, answer):
    turn = parse_turn(answer_text(think, answer))
    assert turn.kind == "answer"
    assert turn.well_formed is True
    assert turn.answer == answer
    assert turn.think == think.strip()
    assert turn.error is None


@pytest.mark.parametrize("think", ["I cannot read the label.", "", "line one\nline two"])
def test_canonical_resize_turn(think):
    text = resize_text(think)
    assert text == (f"<think>{think}</think>\n<tool_call>\n"
                    '{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>')
    turn = parse_turn(text)
    assert turn.kind == "resize"
    assert turn.call == ToolCall(RESIZE.name, {"action": "resize"})
    assert turn.well_formed is True
    assert turn.answer is None
    assert turn.think == think.strip()
    assert turn.error is None


@pytest.mark.parametrize("marker", ["<|im_end|>", "<|endoftext|>", "<|im_end|>\n", " <|im_end|>"])
def test_trailing_end_marker_is_tolerated(marker):
    answer = parse_turn(answer_text("t", "blue") + marker)
    assert (answer.kind, answer.answer, answer.well_formed) == ("answer", "blue", True)
    resize = parse_turn(resize_text("t") + marker)
    assert (resize.kind, resize.well_formed) == ("resize", True)


def test_surrounding_whitespace_is_tolerated():
    assert parse_turn("\n  " + answer_text("t", "4") + "\n\n").well_formed
    assert parse_turn("  " + resize_text("t") + "  \n").well_formed


# ---------------------------------------------------------------- tool-call tolerance


@pytest.mark.parametrize("payload", [
    '{\n   "name" :\n "resize_image",\n\t"arguments"  : {\n "action" : "resize" }\n}',  # whitespace in the JSON
    {"name": TOOL_NAME, "id": "call_0", "type": "function", "arguments": {"action": "resize"}},  # extra keys
    {"name": TOOL_NAME, "parameters": {"action": "resize"}},  # the action under `parameters`
    {"name": TOOL_NAME, "arguments": json.dumps({"action": "resize"})},  # the arguments as a JSON string
])
def test_tolerated_spellings_of_the_call_are_well_formed(payload):
    turn = parse_turn(call(payload))
    assert (turn.kind, turn.well_formed, turn.error) == ("resize", True, None)


def test_unknown_arguments_run_but_are_not_well_formed():
    # the paper's format check: exactly the declared arguments; the call still runs
    payload = {"name": TOOL_NAME, "arguments": {"action": "resize", "scale": 2, "note": "please"}}
    turn = parse_turn(call(payload))
    assert (turn.kind, turn.well_formed) == ("resize", False)
    assert RESIZE.check(payload["arguments"]) == ({"action": "resize"}, None)
    assert RESIZE.exact(payload["arguments"]) is False


@pytest.mark.parametrize(
    "payload",
    [
        {"name": TOOL_NAME},
        {"name": TOOL_NAME, "arguments": {}},
        {"name": TOOL_NAME, "parameters": {}},
        {"name": TOOL_NAME, "arguments": json.dumps({})},
    ],
)
def test_tool_call_without_action_runs_but_is_not_well_formed(payload):
    # RESIZE_TOOL makes `action` required, as the paper does: a call without it still resizes
    # (the engine and the GRPO tool accept it) but earns no format reward
    turn = parse_turn(call(payload))
    assert (turn.kind, turn.well_formed) == ("resize", False)
    assert RESIZE.schema["function"]["parameters"]["required"] == ["action"]
    arguments = codec.decode_call(json.dumps(payload)).arguments
    assert RESIZE.check(arguments) == ({"action": "resize"}, None)
    assert RESIZE.exact(arguments) is False


# ---------------------------------------------------------------- malformed turns


@pytest.mark.parametrize(
    ("text", "error_part"),
    [
        (call({"name": "zoom_in", "arguments": {"action": "resize"}}), "unknown tool 'zoom_in'"),
        (call({"arguments": {"action": "resize"}}), "unknown tool"),
        (call('{"name": "resize_image", "arguments": {"action": "resize"}'), "not valid JSON"),
        (call("resize_image please"), "not valid JSON"),
        (call('["resize_image"]'), "not a JSON object"),
        (call({"name": TOOL_NAME, "arguments": "{not json"}), "arguments are not valid JSON"),
        (call({"name": TOOL_NAME, "arguments": [1, 2]}), "arguments are not a JSON object"),
        (call({"name": TOOL_NAME, "arguments": {"action": "crop"}}), "unknown action 'crop'"),
        ('<think>t</think>\n<tool_call>\n{"name": "resize_image"}', "unterminated <tool_call>"),
        (resize_text("t") + "\n<answer>red</answer>", "both answers and calls a tool"),
        ("<think>t</think><answer>red</answer><tool_call>" + json.dumps({"name": TOOL_NAME})
         + "</tool_call>", "both answers and calls a tool"),
        (resize_text("t") + "\n<tool_call>\n" + json.dumps({"name": TOOL_NAME}) + "\n</tool_call>",
         "more than one tool call"),
        ("<think>I am not sure.</think>", "no <answer> and no tool call"),
        ("", "no <answer> and no tool call"),
        ("red", "no <answer> and no tool call"),
    ],
)
def test_malformed_turns(text, error_part):
    turn = parse_turn(text)
    assert turn.kind == "malformed"
    assert turn.well_formed is False
    assert turn.answer is None
    assert isinstance(turn.error, str) and error_part in turn.error


def test_non_text_turn_is_malformed():
    for value in (None, 3, b"<answer>x</answer>"):
        turn = parse_turn(value)
        assert turn.kind == "malformed" and turn.error


# ---------------------------------------------------------------- format check


@pytest.mark.parametrize(("text", "kind", "answer"), [
    ("Sure! " + answer_text("t", "red"), "answer", "red"),  # text before <think>
    ("Let me see. " + resize_text("t"), "resize", None),
    (answer_text("t", "red") + " Hope this helps!", "answer", "red"),  # text after the answer or the call
    (resize_text("t") + " brb", "resize", None),
    ("<answer>red</answer>", "answer", "red"),  # no <think>, or two
    ("<think>a</think><think>b</think><answer>red</answer>", "answer", "red"),
    ("<think>a</think>" + resize_text("b"), "resize", None),
    ("<think>t</think>\n<answer>red</answer>\n<answer>blue</answer>", "answer", "blue"),  # two answers: the last wins
    ("<think>t</think> so it is \\boxed{42}", "answer", "42"),  # a bare \boxed{} answers
])
def test_answers_and_calls_that_are_not_well_formed(text, kind, answer):
    turn = parse_turn(text)
    assert (turn.kind, turn.answer, turn.well_formed) == (kind, answer, False)


def test_think_inside_answer_is_not_well_formed():
    turn = parse_turn("<think>t</think><answer><think>again</think>red</answer>")
    assert turn.kind == "answer" and turn.well_formed is False


def test_tags_mentioned_while_thinking_do_not_count():
    turn = parse_turn("<think>I will put it in <answer> tags</think>\n<answer>red</answer>")
    assert (turn.kind, turn.answer, turn.well_formed) == ("answer", "red", True)
    turn = parse_turn("<think>maybe a <tool_call> later</think>\n<answer>red</answer>")
    assert (turn.kind, turn.answer, turn.well_formed) == ("answer", "red", True)
    call_part = resize_text("t").split("</think>")[1]
    turn = parse_turn("<think>no <answer> yet, and no </answer></think>" + call_part)
    assert (turn.kind, turn.well_formed) == ("resize", True)


def test_answer_or_call_hidden_inside_think_is_malformed():
    hidden_answer = parse_turn("<think><answer>red</answer></think>")
    assert hidden_answer.kind == "malformed" and hidden_answer.answer is None
    hidden_call = parse_turn("<think><tool_call>" + json.dumps({"name": TOOL_NAME}) + "</tool_call></think>")
    assert hidden_call.kind == "malformed"
    assert parse_turn("<think>it is \\boxed{3}</think>").kind == "malformed"


# ---------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>red</answer>", "red"),
        ("<answer>  red \n</answer>", "red"),
        ("<answer>red</answer> then <answer>blue</answer>", "blue"),
        ("<answer>\\boxed{7}</answer>", "7"),
        ("<answer>It is \\boxed{ 7 }.</answer>", "7"),
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
        ("<answer>\\boxed{a{b{c}}d}</answer>", "a{b{c}}d"),
        ("<answer>\\boxed{1} or \\boxed{2}</answer>", "2"),
        ("<answer>\\boxed{unclosed</answer>", "\\boxed{unclosed"),
        ("the result is \\boxed{x^{2}}", "x^{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{5} but <answer>6</answer>", "6"),
        ("<think>no answer here</think>", None),
        ("", None),
        ("\\boxed{never closed", None),
        ("<answer>unterminated", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dots</answer>", "dots"),
        ("  dots </answer>\n", "dots"),
        ("<think>t</think>\ndots</answer>", "dots"),
        ("<think>t</think>\\boxed{7}</answer>", "7"),
        ("a</answer> b</answer>", "b"),
        ("</answer>", None),
        ("<think>t</think> </answer>", None),
        ("dots</answer><answer>", None),  # an opening tag anywhere: no leniency
        ("<think>dots</answer>", None),
    ],
)
def test_extract_answer_from_a_lone_closing_tag(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["dots</answer>", "<think>small label</think>\ndots</answer>",
                                  "<think>t</think>dots</answer><|im_end|>"])
def test_lone_closing_tag_turn_answers_but_is_not_well_formed(text):
    turn = parse_turn(text)
    assert (turn.kind, turn.answer, turn.well_formed, turn.error) == ("answer", "dots", False, None)


def test_lone_closing_tag_inside_think_is_still_malformed():
    turn = parse_turn("<think>maybe dots</answer></think>")
    assert turn.kind == "malformed" and turn.answer is None


def test_extract_answer_on_non_text_is_none():
    assert extract_answer(None) is None
    assert extract_answer(12) is None


# ---------------------------------------------------------------- fuzzing

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "{", "}",
    '"name"', '"resize_image"', '"arguments"', '"action"', '"resize"', ":", ",", "\\boxed{",
    "<|im_end|>", " ", "\n", "red", "[", "]", '"',
]


def _check_turn(turn: Turn) -> None:
    assert isinstance(turn, Turn)
    assert turn.kind in KINDS
    # the internal parser itself must not have raised (parse_turn's last-resort fallback)
    assert not (turn.error or "").startswith("unparseable turn")
    if turn.kind == "malformed":
        assert isinstance(turn.error, str) and turn.error
        assert turn.well_formed is False and turn.answer is None
    else:
        assert turn.error is None
    if turn.kind == "answer":
        assert isinstance(turn.answer, str)
    if turn.kind == "resize":
        assert turn.answer is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_turn_on_any_text(text):
    _check_turn(parse_turn(text))
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=30))
def test_parse_turn_on_fragment_soup(parts):
    text = "".join(parts)
    turn = parse_turn(text)
    _check_turn(turn)
    if turn.well_formed:
        assert text.strip().startswith("<think>")
        assert turn.kind in {"answer", "resize"}
        after_think = text.split("</think>", 1)[1]
        if turn.kind == "answer":
            assert turn.answer == extract_answer(after_think)
        else:
            assert "<tool_call>" in after_think and "<answer>" not in after_think


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="<>{}\\"), max_size=40),
       st.text(alphabet=st.characters(blacklist_characters="<>{}\\"), min_size=1, max_size=40))
def test_canonical_turns_round_trip(think, answer):
    turn = parse_turn(answer_text(think, answer))
    if answer.strip():
        assert turn.kind == "answer" and turn.well_formed
        assert turn.answer == answer.strip()
        assert turn.think == think.strip()
    resize = parse_turn(resize_text(think))
    assert resize.kind == "resize" and resize.well_formed


# ---------------------------------------------------------------- episodes


def episode(texts: list[str], resized: bool, tokens: list[int]) -> Episode:
    turns = [parse_turn(t) for t in texts]
    return Episode(
        messages=[{"role": "assistant", "content": [{"type": "text", "text": t}]} for t in texts],
        answer=turns[-1].answer if turns else None,
        turns=turns,
        visual_tokens_per_turn=tokens,
        full_res_visual_tokens=16,
        calls=[ToolCall(RESIZE.name, {"action": "resize"})] if resized else [],
    )


def test_direct_answer_episode():
    ep = episode([answer_text("clear", "red")], resized=False, tokens=[4])
    assert ep.well_formed is True and ep.visual_tokens == 4
    assert ep.error is None and ep.summary()["error"] is None


def test_resize_then_answer_episode():
    ep = episode([resize_text("too small"), answer_text("now clear", "dots")], resized=True, tokens=[4, 16])
    assert ep.well_formed is True
    assert ep.visual_tokens == 20
    summary = ep.summary()
    assert summary["visual_tokens"] == 20 and summary["well_formed"] is True
    assert summary["turns"] == [resize_text("too small"), answer_text("now clear", "dots")]


@pytest.mark.parametrize(
    ("texts", "resized"),
    [
        ([], False),
        ([resize_text("t")], True),  # never answered
        ([answer_text("t", "red")], True),  # claims a resize that never happened
        ([resize_text("t"), answer_text("t", "red")], False),
        ([resize_text("t"), resize_text("t"), answer_text("t", "red")], True),
        (["oops " + answer_text("t", "red")], False),  # answer turn not well formed
        ([resize_text("t") + " extra", answer_text("t", "red")], True),  # resize turn not well formed
        (["<think>t</think>", answer_text("t", "red")], True),  # malformed first turn
        ([answer_text("t", "red"), answer_text("t", "blue")], True),
    ],
)
def test_episodes_that_are_not_well_formed(texts, resized):
    ep = episode(texts, resized=resized, tokens=[4] * len(texts))
    assert ep.well_formed is False


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=3))
def test_visual_tokens_is_the_sum_over_turns(tokens):
    ep = episode([answer_text("t", "red")], resized=False, tokens=tokens)
    assert ep.visual_tokens == sum(tokens)


# ---------------------------------------------------------------- episode errors


def test_lone_closing_tag_after_a_resize_is_the_answer_but_not_well_formed():
    ep = episode([resize_text("too small"), "dots</answer>"], resized=True, tokens=[4, 16])
    assert ep.answer == "dots" and ep.error is None
    assert ep.well_formed is False


@pytest.mark.parametrize(
    ("texts", "resized", "reason"),
    [
        (["<think>not sure</think>"], False, "final turn malformed: no <answer> and no tool call"),
        ([resize_text("t"), "red"], True, "final turn malformed: no <answer> and no tool call"),
        ([resize_text("t"), resize_text("t")], True, "final turn called resize_image instead of answering"),
        ([answer_text("t", " ")], False, "final answer is empty"),
        ([], False, "no assistant turn"),
    ],
)
def test_episode_without_an_answer_says_why(texts, resized, reason):
    ep = episode(texts, resized=resized, tokens=[4] * len(texts))
    assert not ep.answer
    assert ep.error is not None and ep.error.startswith(reason) and "\n" not in ep.error
    assert ep.summary()["error"] == ep.error
