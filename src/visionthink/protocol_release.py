"""The authors' protocol strings, as data: what the released VisionThink checkpoints were trained on.

Origin: https://github.com/dvlab-research/VisionThink at commit 42afd8c34a4efffeb9811368469d3d890efdedf3
(2025-08-26), Apache-2.0. The strings below are copied byte for byte (typos included: "Countinue"); no code is.

- `SYSTEM_PROMPT`: `verl/trainer/constants.py`, `TOOL_AGENT_SYSTEM_PROMPT` (also `TOOL_CALL_SYSTEM_PROMPT` in
  `scripts/vllm_tool.py`, the evaluation model). The tool block is part of the system text: the chat
  template never renders `tools`. Its JSON has a raw newline inside the action's description.
- `USER_TEMPLATE`: `verl/utils/dataset/multimodal_dataset.py`, `prompt_template_dict["tool_agent"]` (a
  `str.format` template: `{{}}` renders as `{}`). The question is `"<image>\\n" + question` (the
  evaluation model prepends `<image>\\n` when the question has none), and `<image>` becomes
  `<|vision_start|><|image_pad|><|vision_end|>`: the image sits after "Here is the image and question:".
- `TOOL_RESPONSE_PREFIX` / `TOOL_RESPONSE_SUFFIX` / `FOLLOW_UP`: the next user turn after a valid call,
  built in `verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py` (`vLLMRollout_MultiTurn_ToolCall`)
  around the resized image; `FOLLOW_UP` is `TOOL_CALL_MULTI_TRUN_PROMPT` of `verl/trainer/constants.py`.
- `ERROR_PREFIX` / `ERROR_SUFFIX` / `ERROR_FOLLOW_UP`: the user turn after a call that could not run (same
  rollout; `ERROR_INFO_MULTI_TURN_PROMPT`). The evaluation model (`scripts/vllm_tool.py`) sends the error
  text without the `<tool_response>` wrapper; the training rollout's form is the one kept here.
- `CALL_PATTERN`, `JSON_PATTERN`, `ACTIONS`, `UNKNOWN_ACTION`, `ONE_CALL`: the rollout's call parsing
  (`re.compile(r'<tool_call>(.*?)</tool_call>', re.DOTALL)`, `re.compile(r'\\{.*?\\}\\}')`) and the assertion
  messages of `prepare_tool_call_inputs` (`verl/workers/rollout/vllm_rollout/function_tools.py`).
- Turn boundaries (the rollout's token handling): the assistant's reply is appended with its `<|im_end|>`
  (151645) and the next turn follows at once as `<|im_start|>user\\n...`, with no newline between; a reply
  without `<|im_end|>` gets its last token replaced by it; ids above 151664 are dropped. Replies are read
  with `skip_special_tokens=True` (`<tool_call>` is not special in Qwen2.5's vocabulary, so it stays).
- Answers: the reward code (`verl/utils/reward_score/general_qa_tool.py`, `rule_based_tool.py`,
  `extract_answer_tags="split"`) takes `text.split("<answer>")[-1].split("</answer>")[0].strip()`, then grades with
  `\\boxed{}` taken out; the evaluation (`scripts/eval_examples/utils_pope.py`) takes
  `split("</answer>")[0].split("<answer>")[-1].strip()` of the whole reply (every assistant turn, decoded with
  special tokens skipped). `profiles.ReleaseProfile` documents which is used where.
- Views and budget (`scripts/vllm_tool.py`): the first image is the original halved (`width // 2`, `height // 2`,
  LANCZOS), a resize call returns the original, a view with a side under 28 px is enlarged to 28 first, and vLLM's
  processor resizes both (smart resize); each turn may write `MAX_NEW_TOKENS` tokens.
  Format checks: a direct answer matches `^<think>.*</think>.*<answer>.*</answer>$` with one of each tag and
  no tool call; a call matches `^<think>.*</think>.*<tool_call>.*</tool_call>$` with one think block and
  no answer tag.
"""

from __future__ import annotations

from typing import Any

SOURCE = "github.com/dvlab-research/VisionThink@42afd8c34a4efffeb9811368469d3d890efdedf3"

SYSTEM_PROMPT = (
    "You are a helpful assistant.\n\n# Tools\n\nYou may call the function tool shown below to assist with the user "
    "query.\n\nYou are provided with the function signature within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name_for_human": "resize_image", "name": "resize_image", "description": '
    '"Resize the image resolution.", "parameters": {"properties": {"action": {"description": "The action to '
    "perform. The available actions are:\n* `resize`: Double the resolution of the current image. You should only "
    "use this tool if you are unable to obtain the critical information needed to answer the question from the "
    'current resolution.", "enum": ["resize"], "type": "string"}}, "required": ["action"], "type": "object"}, '
    '"args_format": "Format the arguments as a JSON object."}}\n</tools>\nFor each function call, return a json '
    "object with the function name and the corresponding argument within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name_for_human": "resize_image",
        "name": "resize_image",
        "description": "Resize the image resolution.",
        "parameters": {
            "properties": {
                "action": {
                    "description": (
                        "The action to perform. The available actions are:\n* `resize`: Double the resolution of the "
                        "current image. You should only use this tool if you are unable to obtain the critical "
                        "information needed to answer the question from the current resolution."
                    ),
                    "enum": ["resize"],
                    "type": "string",
                }
            },
            "required": ["action"],
            "type": "object",
        },
        "args_format": "Format the arguments as a JSON object.",
    },
}
"""The tool as the system prompt lists it (key order kept); the prompt holds `json.dumps(TOOL_SCHEMA)` with the
description's `\\n` escape written as a raw newline."""

USER_TEMPLATE = (
    "Answer the question based on the image provided. You must conduct reasoning within <think> and </think> first "
    "in each of your reasoning steps. You may call ONE function tool per step to help you better solve the problem. "
    "Place the function tool within <tool_call> and </tool_call> at the end of each step to perform a function call. "
    "You should continue your reasoning process based on the content returned by the function tool. Once you confirm "
    "your final answer, place the final answer inside <answer> and </answer>. For mathematical or multiple-choice "
    "problem, wrap the answer value or choice with \\boxed{{}}. Here is the image and question:\n{Question}"
)
IMAGE_MARK = "<image>"
"""Where the image goes in the question (the release's placeholder)."""
QUESTION_PREFIX = IMAGE_MARK + "\n"
"""Put in front of a question that has no `<image>` (scripts/vllm_tool.py)."""

TOOL_RESPONSE_PREFIX = "<tool_response>\nThe resized image is shown below:\n"
TOOL_RESPONSE_SUFFIX = "\n</tool_response>\n"
FOLLOW_UP = (
    "Please carefully analyze the content returned from the image resize tool in combination with the original "
    "question and image from the user, continue your reasoning process inside <think> and </think> and then write "
    "your final answer inside <answer> and </answer>."
)
ERROR_PREFIX = "<tool_response>\nERROR occurs during the function tool call. Error Information: "
ERROR_SUFFIX = ".\n</tool_response>\n"
ERROR_FOLLOW_UP = (
    "Please analyze the error information obtained from the function tool and adjust your response. Countinue your "
    "reasoning process inside <think> and </think>."
)

CALL_PATTERN = r"<tool_call>(.*?)</tool_call>"  # compiled with re.DOTALL
JSON_PATTERN = r"\{.*?\}\}"  # compiled without flags: `.` stops at a newline
ACTIONS = ("resize",)
UNKNOWN_ACTION = "Unknown Tool Type: {action}. Available function tools are: `resize`"
ONE_CALL = "You should only call function `resize` once per function call."
NO_CALL_ERROR = "cannot access local variable 'action_type' where it is not associated with a value"
"""What `prepare_tool_call_inputs` raises when no call parsed: it returns a variable its loop never set (Python 3.11's
message)."""

SPECIAL_TOKENS_SKIPPED = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
"""Qwen2.5's tokens marked special (dropped by `skip_special_tokens=True`); `<tool_call>` and the FIM tokens are not."""

MAX_NEW_TOKENS = 8192
"""Tokens per assistant turn in the evaluation model (`scripts/vllm_tool.py`: `"max_tokens": 8192`, whatever the
task asks)."""

MAX_TOKEN_ID = 151664
"""The rollout drops generated ids above this (Qwen2.5's last added token, `<|file_sep|>`)."""
IM_END_ID = 151645
