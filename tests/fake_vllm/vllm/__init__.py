"""A stand-in for the `vllm` package that records what the engine passes at its API boundary.

`LLM(**kwargs)` keeps its keyword arguments; `LLM.generate(prompts, sampling_params, use_tqdm=False)` keeps every
prompt (text and `multi_modal_data`) and `SamplingParams` it is given and answers each prompt with `LLM.reply(prompt,
params)`: by default, a resize call while the prompt holds one image and an answer once it holds two. Its outputs are
shaped like vLLM's `RequestOutput`s (`.outputs[0].text`, `.outputs[0].token_ids`, `.prompt_token_ids`, and where
`SamplingParams(logprobs=...)` asks, `.outputs[0].logprobs`: one `{token_id: Logprob}` per token, each at `LOGPROB`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESIZE = '<think>too small</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n' \
         '</tool_call><|im_end|>'
ANSWER = "<think>seen</think>\n<answer>dots</answer><|im_end|>"

LOGPROB = -0.05
"""The log-probability the stand-in gives every token it writes."""

instances: list[LLM] = []
"""Every `LLM` built since the module was loaded."""


class SamplingParams:
    """Keeps its keyword arguments, readable as attributes and as `kwargs`."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class Call:
    """One `generate` call: its prompts and their sampling parameters, in order."""

    prompts: list[dict[str, Any]]
    params: list[SamplingParams]
    use_tqdm: bool


def scripted_reply(prompt: dict[str, Any], params: SamplingParams) -> str:
    """A resize call on the first turn (one image), an answer on the second."""
    return RESIZE if len(prompt["multi_modal_data"]["image"]) == 1 else ANSWER


class LLM:
    """`vllm.LLM`'s constructor and `generate`, recorded."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.calls: list[Call] = []
        self.reply = scripted_reply
        instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.calls.append(Call(prompts, list(params), use_tqdm))
        outputs = []
        for prompt, param in zip(prompts, params, strict=True):
            text = self.reply(prompt, param)
            tokens = list(range(len(text.split())))
            prompt_ids = list(range(len(prompt["prompt"].split())))
            logprobs = None if getattr(param, "logprobs", None) is None else [{t: Logprob(LOGPROB, 1)} for t in tokens]
            outputs.append(RequestOutput(prompt["prompt"], prompt_ids, [CompletionOutput(text, tokens, logprobs)]))
        return outputs
