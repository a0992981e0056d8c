"""The `release` protocol profile renders the authors' prompts byte for byte; `visionthink` is unchanged.

The expected texts are written out here from the authors' release (github.com/dvlab-research/VisionThink at
42afd8c3: verl/trainer/constants.py, verl/utils/dataset/multimodal_dataset.py,
verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py), not built from the module under test.
"""

from __future__ import annotations

import json

import pytest
from conftest import TINY_GRID as GRID  # tests/ is on sys.path; a resize reply is the high view whatever the grid
from PIL import Image

from visionthink import protocol
from visionthink.images import PixelGrid, Views
from visionthink.models.processor import VisionThinkProcessor
from visionthink.profiles import RELEASE, VISIONTHINK, get_profile
from visionthink.tokens import render_text
from visionthink.tools import RESIZE

SYSTEM = (
    "<|im_start|>system\n"
    "You are a helpful assistant.\n"
    "\n"
    "# Tools\n"
    "\n"
    "You may call the function tool shown below to assist with the user query.\n"
    "\n"
    "You are provided with the function signature within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name_for_human": "resize_image", "name": "resize_image", "description": '
    '"Resize the image resolution.", "parameters": {"properties": {"action": {"description": "The action to perform. '
    "The available actions are:\n"
    "* `resize`: Double the resolution of the current image. You should only use this tool if you are unable to "
    'obtain the critical information needed to answer the question from the current resolution.", "enum": ["resize"], '
    '"type": "string"}}, "required": ["action"], "type": "object"}, "args_format": "Format the arguments as a JSON '
    'object."}}\n'
    "</tools>\n"
    "For each function call, return a json object with the function name and the corresponding argument within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
USER = (
    "<|im_start|>user\n"
    "Answer the question based on the image provided. You must conduct reasoning within <think> and </think> first in "
    "each of your reasoning steps. You may call ONE function tool per step to help you better solve the problem. Place "
    "the function tool within <tool_call> and </tool_call> at the end of each step to perform a function call. You "
    "should continue your reasoning process based on the content returned by the function tool. Once you confirm your "
    "final answer, place the final answer inside <answer> and </answer>. For mathematical or multiple-choice problem, "
    "wrap the answer value or choice with \\boxed{}. Here is the image and question:\n"
    "<|vision_start|><|image_pad|><|vision_end|>\n"
    "What is the total on the receipt?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CALL = (
    "<think>The digits are too small.</think>\n"
    "<tool_call>\n"
    '{"name": "resize_image", "arguments": {"action": "resize"}}\n'
    "</tool_call>"
)
TOOL = (
    "<|im_end|><|im_start|>user\n"  # no newline after the assistant's <|im_end|>, as the rollout appends it
    "<tool_response>\n"
    "The resized image is shown below:\n"
    "<|vision_start|><|image_pad|><|vision_end|>\n"
    "</tool_response>\n"
    "Please carefully analyze the content returned from the image resize tool in combination with the original "
    "question and image from the user, continue your reasoning process inside <think> and </think> and then write "
    "your final answer inside <answer> and </answer>.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ERROR = (
    "<|im_end|><|im_start|>user\n"
    "<tool_response>\n"
    "ERROR occurs during the function tool call. Error Information: Unknown Tool Type: zoom. Available function tools "
    "are: `resize`.\n"
    "</tool_response>\n"
    "Please analyze the error information obtained from the function tool and adjust your response. Countinue your "
    "reasoning process inside <think> and </think>.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QUESTION = "What is the total on the receipt?"


@pytest.fixture(scope="module")
def processor(shipped_model_dir):
    return VisionThinkProcessor.from_pretrained(str(shipped_model_dir))


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (56, 56), "white")


def test_first_turn_renders_the_release_prompt(processor, image):
    messages = RELEASE.first_turn(QUESTION, image)
    assert render_text(processor, messages, add_generation_prompt=True, protocol=RELEASE) == SYSTEM + USER
    assert render_text(processor, messages, add_generation_prompt=True, protocol="release") == SYSTEM + USER


def test_resize_and_answer_render_the_release_turns(processor, image):
    answer = "<think>It reads 42.</think>\n<answer>\\boxed{42}</answer>"
    messages = RELEASE.first_turn(QUESTION, image)
    messages.append(protocol.assistant_turn(RELEASE.call_text("The digits are too small.", "resize_image",
                                                              {"action": "resize"})))
    turn = RELEASE.parse_turn(CALL)
    messages.append(RELEASE.reply(turn, CALL, Views(low=image, high=image), GRID))
    assert render_text(processor, messages, add_generation_prompt=True, protocol=RELEASE) == SYSTEM + USER + CALL + TOOL
    messages.append(protocol.assistant_turn(answer))
    assert render_text(processor, messages, protocol=RELEASE) == SYSTEM + USER + CALL + TOOL + answer + "<|im_end|>"
    assert protocol.images_in(messages) == [image, image]


def test_bad_call_gets_the_release_error_turn(processor, image):
    bad = '<think>t</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "zoom"}}\n</tool_call>'
    turn = RELEASE.parse_turn(bad)
    assert turn.kind == "malformed"
    assert turn.error == "Unknown Tool Type: zoom. Available function tools are: `resize`"
    messages = [*RELEASE.first_turn(QUESTION, image), protocol.assistant_turn(bad),
                RELEASE.reply(turn, bad, Views(low=image, high=image), GRID)]
    assert render_text(processor, messages, add_generation_prompt=True, protocol=RELEASE) == SYSTEM + USER + bad + ERROR


def test_question_with_its_own_image_mark_keeps_it_in_place(processor, image):
    messages = RELEASE.first_turn("Look: <image> What colour?", image)
    text = render_text(processor, messages, protocol=RELEASE)
    assert "Here is the image and question:\nLook: <|vision_start|><|image_pad|><|vision_end|> What colour?" in text


def test_tool_schema_is_the_one_in_the_system_prompt():
    (tool,) = RELEASE.tools
    schema = tool.schema["function"]
    assert tool.name == schema["name"] == schema["name_for_human"] == "resize_image"
    assert schema["args_format"] == "Format the arguments as a JSON object."
    line = RELEASE.system_prompt.split("<tools>\n")[1].split("\n</tools>")[0]
    assert line == json.dumps(tool.schema).replace("\\n", "\n")  # the release writes a raw newline
    assert RELEASE.template_tools() is None  # the block is in the system text, never rendered from `tools`


# ---------------------------------------------------------------- parsing as the release rollout does


@pytest.mark.parametrize(("text", "kind", "error"), [
    (CALL, "resize", None),
    (CALL + "<|im_end|>", "resize", None),
    ('<tool_call>{"name": "x", "arguments": {"action": "resize"}}</tool_call>', "resize", None),  # name unchecked
    ("<think>a</think><answer>b</answer>" + CALL, "resize", None),  # any complete call runs
    ("<think>a</think><tool_call>{}</tool_call>", "malformed",
     "cannot access local variable 'action_type' where it is not associated with a value"),
    ('<tool_call>{"name": "resize_image", "arguments": {"zoom": 2}}</tool_call>', "malformed", "'action'"),
    ('<tool_call>{"name": "resize_image", "arguments": {"action": "resize"}} '
     '{"name": "resize_image", "arguments": {"action": "resize"}}</tool_call>', "malformed",
     "You should only call function `resize` once per function call."),
    ('<tool_call>{"name": "resize_image", "arguments": {"action": resize}}</tool_call>', "malformed",
     "Expecting value: line 1 column 50 (char 49)"),
])
def test_release_call_parsing(text, kind, error):
    turn = RELEASE.parse_turn(text)
    assert (turn.kind, turn.error) == (kind, error)


@pytest.mark.parametrize(("text", "answer", "well_formed"), [
    ("<think>t</think>\n<answer>\\boxed{B}</answer>", "B", True),
    ("<think>t</think>\n<answer> 12 apples </answer><|im_end|>", "12 apples", True),
    ("<think>t</think> the answer is 7", "<think>t</think> the answer is 7", False),  # split keeps the whole text
    ("<answer>a</answer><answer>b</answer>", "b", False),
    ("<think>t</think><tool_call>unterminated", "<think>t</think><tool_call>unterminated", False),
])
def test_release_answers(text, answer, well_formed):
    turn = RELEASE.parse_turn(text)
    assert (turn.kind, turn.answer, turn.well_formed) == ("answer", answer, well_formed)


def test_release_format_check_of_a_call():
    assert RELEASE.parse_turn(CALL).well_formed
    assert not RELEASE.parse_turn("no think " + CALL).well_formed
    assert not RELEASE.parse_turn("<think>a</think><answer>b</answer>" + CALL).well_formed


# ---------------------------------------------------------------- visionthink unchanged, TRL prompts


def test_visionthink_profile_renders_as_before(processor, image):
    messages = protocol.first_turn("q?", image) + [
        protocol.assistant_turn(VISIONTHINK.call_text("t", "resize_image", {"action": "resize"})),
        protocol.tool_turn(RESIZE, image)]
    before = processor.apply_chat_template(messages, tools=[RESIZE.schema], tokenize=False,
                                           add_generation_prompt=True)
    assert render_text(processor, messages, add_generation_prompt=True) == before
    assert render_text(processor, messages, add_generation_prompt=True, protocol="visionthink") == before
    assert get_profile(None) is VISIONTHINK and VISIONTHINK.first_turn("q?", image) == protocol.first_turn("q?", image)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_profile("paper")


@pytest.mark.parametrize("profile", [VISIONTHINK, RELEASE])
def test_trl_prompt_renders_as_first_turn(processor, image, profile):
    from trl.data_utils import prepare_multimodal_messages

    prompt = prepare_multimodal_messages(profile.trl_prompt(QUESTION), images=[image])
    expected = render_text(processor, profile.first_turn(QUESTION, image), add_generation_prompt=True, protocol=profile)
    assert render_text(processor, prompt, add_generation_prompt=True, protocol=profile) == expected


def test_release_template_is_prefix_preserving_for_trl(processor):
    from trl.chat_template_utils import is_chat_template_prefix_preserving

    original = processor.chat_template
    try:
        processor.chat_template = RELEASE.chat_template
        assert is_chat_template_prefix_preserving(processor)
    finally:
        processor.chat_template = original


def test_remote_engine_sends_the_release_turns_without_tools(image):
    from visionthink.engines.remote import RemoteEngine

    engine = RemoteEngine("http://127.0.0.1:9/v1", model="m", protocol="release")
    messages = [*RELEASE.first_turn(QUESTION, image), protocol.assistant_turn(CALL),
                RELEASE.tool_turn(RELEASE.tool("resize_image"), image)]
    body = engine._body("m", messages, {}, forbid_call=False)
    assert "tools" not in body and "tool_choice" not in body
    sent = body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == RELEASE.system_prompt
    assert sent[3]["content"][0] == {"type": "text", "text": "<tool_response>\nThe resized image is shown below:\n"}
    assert sent[3]["content"][1]["type"] == "image_url"
    default = RemoteEngine("http://127.0.0.1:9/v1", model="m")._body("m", protocol.first_turn("q", image), {}, True)
    assert default["tools"] == [RESIZE.schema] and default["tool_choice"] == "none"


def test_grpo_environment_answers_in_the_profile_turns(image):
    from visionthink.train import grpo_env

    default = grpo_env.environment_for(None)
    assert default.profile is VISIONTHINK and grpo_env.tool_methods(default) == ["resize_image"]
    env = grpo_env.environment_for("release")()
    env.reset(high_res_image=image)
    content = env.resize_image(action="resize")
    assert content == RELEASE.tool_turn(RELEASE.tool("resize_image"), image)["content"]
    assert env.resize_image(action="resize")[0]["text"].startswith("<tool_response>\nERROR occurs during the function")


def test_protocol_options_reach_the_configs(tmp_path):
    from visionthink.cli import build_parser
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    parser = build_parser()
    assert parser.parse_args(["train", "grpo", "--protocol", "release"]).protocol == "release"
    assert parser.parse_args(["train", "grpo"]).protocol is None  # the recipe's, else visionthink
    for command in (["ask", "x.png", "q"], ["eval", "--out", "o"], ["serve"]):
        assert parser.parse_args(command).protocol is None  # the model folder's declaration, else visionthink
        assert parser.parse_args([*command, "--protocol", "release"]).protocol == "release"
    with pytest.raises(SystemExit):
        parser.parse_args(["ask", "x.png", "q", "--protocol", "paper"])
    assert VisionThinkGRPOConfig(output_dir=str(tmp_path), report_to="none").protocol == "visionthink"
    with pytest.raises(ValueError, match="unknown protocol"):
        VisionThinkGRPOConfig(output_dir=str(tmp_path), report_to="none", protocol="paper")


# ---------------------------------------------------------------- answers and turn budget as the release evaluates


def _episode_answer(profile, texts: list[str]) -> str | None:
    messages = [*profile.first_turn(QUESTION, Image.new("RGB", (56, 56))), *map(protocol.assistant_turn, texts)]
    return profile.episode_answer(messages, [profile.parse_turn(text) for text in texts])


@pytest.mark.parametrize(("texts", "release", "ours"), [
    (["<think>t</think>\n<answer>\\boxed{B}</answer>"], "B", "B"),
    ([CALL, "<think>b</think>\n<answer> 42 </answer><|im_end|>"], "42", "42"),
    # the whole reply is split at its first </answer>: a first turn that answers and calls wins over the second turn
    (["<think>a</think><answer>first</answer>" + CALL, "<think>b</think><answer>second</answer>"], "first", "second"),
    (["<think>a</think><answer>A</answer> then <answer>C</answer>"], "A", "C"),
    (["no tags at all"], "no tags at all", None),  # a reply without tags is its own answer to the release
    ([CALL, CALL], (CALL + CALL).strip(), None),  # so is one whose last turn calls again
])
def test_release_answer_is_the_evaluation_split_of_the_whole_reply(texts, release, ours):
    """`scripts/eval_examples/utils_pope.py`: `pred.split("</answer>")[0].split("<answer>")[-1].strip()` over every
    assistant turn joined, decoded with special tokens skipped; `visionthink` reads the final turn only."""
    assert _episode_answer(RELEASE, texts) == release
    assert _episode_answer(VISIONTHINK, texts) == ours


def test_release_turn_keeps_the_reward_split():
    """A turn's own answer (what GRPO rollouts score) is the reward code's `split("<answer>")[-1]` first."""
    assert RELEASE.parse_turn("<think>a</think><answer>A</answer> then <answer>C</answer>").answer == "C"


def test_turn_budget_is_the_profiles():
    from visionthink.engines.kv_decoder import SamplingConfig
    from visionthink.engines.remote import RemoteEngine
    from visionthink.profiles import VISIONTHINK_ZOOM
    from visionthink.protocol_release import MAX_NEW_TOKENS

    assert (RELEASE.max_new_tokens, MAX_NEW_TOKENS) == (8192, 8192)
    assert VISIONTHINK.max_new_tokens == VISIONTHINK_ZOOM.max_new_tokens == SamplingConfig().max_new_tokens == 64
    for name, budget in (("release", 8192), ("visionthink", 64), (None, 64)):
        assert RemoteEngine("http://127.0.0.1:9/v1", model="m", protocol=name).sampling.max_new_tokens == budget
    given = SamplingConfig(max_new_tokens=300)
    assert RemoteEngine("http://127.0.0.1:9/v1", model="m", protocol="release", sampling=given).sampling is given


def test_local_engine_defaults_to_the_profiles_budget(random_tiny):
    from visionthink.engines.transformers_engine import TransformersEngine

    assert TransformersEngine(*random_tiny, protocol="release").sampling.max_new_tokens == 8192
    assert TransformersEngine(*random_tiny).sampling.max_new_tokens == 64


def test_the_loop_gives_release_views_and_answers():
    from conftest import ScriptedBackend

    from visionthink.engines.base import Request, run_episodes

    backend = ScriptedBackend(["<think>a</think><answer>first</answer>" + CALL, "<think>b</think><answer>2</answer>"],
                              RELEASE, PixelGrid(28, 3136, 12845056))
    episode = run_episodes(backend, [Request(Image.new("RGB", (500, 4000), "white"), QUESTION)], "visionthink")[0]
    first_view = protocol.images_in(episode.messages)[0]  # the view the model saw first
    assert first_view.size == (252, 1988)  # 250x2000, the original halved, then the processor's resize
    assert episode.resized and episode.visual_tokens_per_turn == [9 * 71, 18 * 143]
    assert episode.full_res_visual_tokens == 18 * 143
    assert episode.answer == "first"  # the release's evaluation reads the whole reply
