"""VisionThink episodes on vLLM in-process (GPU), with prefix caching so the resize turn reuses the first.

Optional: needs `pip install 'visionthink[vllm]'` and a CUDA GPU; vLLM is imported only when
an engine is built, and a clear `VisionThinkError` says so when it is missing. On CPU the test
suite runs this backend on a replay of the transformers engine's turns (tests/test_engine_loop.py).

Same interface as `TransformersEngine`: `VLLMEngine.from_pretrained(dir).run(requests, mode)`
returns `protocol.Episode`s. Each turn renders the conversation with the project's chat
template (`visionthink.tokens.render_text`, the very text the transformers engine feeds)
and passes the images as `multi_modal_data`. With `enable_prefix_caching=True`, the second
turn's prompt, which starts with the whole first turn (its image included: vLLM hashes image
content into the block keys), is served from cached KV blocks and only the tool turn with
the high-res image is computed.

Tokens a mode forbids (`<tool_call>` in `low`/`full` and the oracle's no-resize first turns;
image placeholders always) get a -100 logit bias, like the transformers engine's banned ids.
"""

from __future__ import annotations

from pathlib import Path

from visionthink import protocol
from visionthink.engines.base import Generated, never_write_ids, run_episodes
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import VisionThinkError
from visionthink.profiles import ProtocolProfile, get_profile
from visionthink.tokens import render_text


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise VisionThinkError(
            "the vLLM engine needs vLLM, which is not installed: pip install 'visionthink[vllm]' "
            f"(a CUDA GPU is required) [{error}]"
        ) from None
    return vllm


class VLLMEngine:
    """Episodes on an in-process `vllm.LLM` (prefix caching on); the loop is `engines.base`'s."""

    def __init__(self, llm, processor, sampling: SamplingConfig | None = None, batch_size: int = 256,
                 protocol: str | ProtocolProfile | None = None):
        self.llm = llm
        self.protocol = get_profile(protocol)
        """The conversation format (`profiles`; default `visionthink`)."""
        self.processor = processor
        self.grid = processor.grid
        self.sampling = sampling or SamplingConfig()
        self.batch_size = batch_size
        tokenizer = processor.tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.never_ids = never_write_ids(tokenizer)
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, sampling: SamplingConfig | None = None,
                        protocol: str | ProtocolProfile | None = None, **llm_kwargs) -> VLLMEngine:
        """Load `model_dir` into vLLM; `llm_kwargs` go to `vllm.LLM` (gpu_memory_utilization, dtype, ...)."""
        vllm = _import_vllm()
        from visionthink.models.processor import VisionThinkProcessor, chat_template

        processor = VisionThinkProcessor.from_pretrained(str(model_dir))
        if processor.chat_template is None:
            processor.chat_template = chat_template()
        llm_kwargs.setdefault("enable_prefix_caching", True)
        llm_kwargs.setdefault("limit_mm_per_prompt", {"image": protocol.MAX_ASSISTANT_TURNS})
        llm = vllm.LLM(model=str(model_dir), **llm_kwargs)
        return cls(llm, processor, sampling, protocol=protocol)

    def run(self, requests: list, mode: str = "visionthink", progress=None) -> list[protocol.Episode]:
        """Episodes for all requests, in order."""
        return run_episodes(self, requests, mode, progress)

    def session(self) -> VLLMEngine:
        return self  # vLLM's prefix cache is the only state kept between turns

    def generate(self, rows: list[int], conversations: list[list[protocol.Message]],
                 forbid_call: list[bool]) -> list[Generated]:
        prompts = [{"prompt": render_text(self.processor, messages, add_generation_prompt=True,
                                              protocol=self.protocol),
                    "multi_modal_data": {"image": protocol.images_in(messages)}} for messages in conversations]
        params = [self._params([*self.never_ids, self.tool_call_id] if forbid else self.never_ids)
                  for forbid in forbid_call]
        generated = []
        for output in self.llm.generate(prompts, params, use_tqdm=False):
            completion = output.outputs[0]
            text = completion.text
            for marker in ("<|im_end|>", "<|endoftext|>"):
                text = text.removesuffix(marker)
            n = len(completion.token_ids)
            generated.append(Generated(text, n, sequence_tokens=len(output.prompt_token_ids or []) + n))
        return generated

    def _params(self, banned: list[int]):
        vllm = _import_vllm()
        s = self.sampling
        return vllm.SamplingParams(
            max_tokens=s.max_new_tokens,
            temperature=s.temperature if s.do_sample else 0.0,
            top_p=s.top_p,
            top_k=s.top_k if s.do_sample and s.top_k > 0 else -1,
            seed=s.seed,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=False,
            logit_bias={token: -100.0 for token in banned},
        )
