"""VisionThink episodes on vLLM in-process (GPU), with prefix caching so the resize turn reuses the first.

Optional: needs `pip install 'visionthink[vllm]'` and a CUDA GPU; vLLM is imported only when
an engine is built, and a clear `VisionThinkError` says so when it is missing. On CPU the test
suite runs this backend against a stand-in `vllm` module (tests/fake_vllm, tests/test_vllm_engine.py)
and on a replay of the transformers engine's turns (tests/test_engine_loop.py).

Same interface as `TransformersEngine`: `VLLMEngine.from_pretrained(dir).run(requests, mode)`
returns `protocol.Episode`s. Each turn renders the conversation with the project's chat
template for the protocol profile (`visionthink.tokens.render_text`, the very text the transformers
engine feeds) and passes the images as `multi_modal_data`. vLLM's image processor gets the folder's
pixel bounds (`mm_processor_kwargs`), so it keeps the views' sizes and their visual-token counts as
the loop accounts them. With `enable_prefix_caching=True`, the second turn's prompt, which starts
with the whole first turn (its image included: vLLM hashes image content into the block keys), is
served from cached KV blocks and only the tool turn with the high-res image is computed.

Tokens a turn may not write get a -100 logit bias (vLLM's bound, as OpenAI's): image and vision
placeholders and `<|im_start|>` always (`engines.base.never_write_ids`), `<tool_call>` where the mode
forbids the call (`low`/`full` and the oracle's no-resize first turns), like the transformers engine's
banned ids.

First turns ask vLLM for the log-probability of every token written (`logprobs=0`), so the answer's confidence
(`engines.confidence`) is known and `Request.escalate_below` works as on the transformers engine. vLLM returns raw
log-probabilities (before the logit bias), so the banned tokens keep their share of each step's probability: under
greedy decoding a sliver, by which the confidence can only come out lower than the transformers engine's.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

from visionthink.engines.base import BANNED_BIAS, Generated, never_write_ids, run_episodes, stop_ids
from visionthink.engines.confidence import ANSWER_OPEN, answer_confidence, token_texts
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import ModelError, VisionThinkError
from visionthink.profiles import ProtocolProfile, declared_profile, get_profile
from visionthink.protocol import END_MARKERS, MAX_ASSISTANT_TURNS, Episode, Message, images_in
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

    records_confidence = True
    """First turns carry each answer's confidence (vLLM's `logprobs`), so unsure answers can be escalated."""

    def __init__(self, llm, processor, sampling: SamplingConfig | None = None, batch_size: int = 256,
                 protocol: str | ProtocolProfile | None = None):
        self.llm = llm
        self.protocol = get_profile(protocol)
        """The conversation format (`profiles`; default `visionthink`)."""
        self.processor = processor
        self.grid = processor.grid
        self.sampling = sampling or SamplingConfig(max_new_tokens=self.protocol.max_new_tokens)
        """Default: greedy, the profile's turn budget (`ProtocolProfile.max_new_tokens`)."""
        self.batch_size = batch_size
        tokenizer = processor.tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.never_ids = never_write_ids(tokenizer)
        self.stop_ids = stop_ids(tokenizer)
        self._seeds = random.Random(self.sampling.seed)
        """Draws one seed per sampled request, so equal prompts in a batch still sample apart, reproducibly."""

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, sampling: SamplingConfig | None = None,
                        protocol: str | ProtocolProfile | None = None, batch_size: int = 256,
                        **llm_kwargs) -> VLLMEngine:
        """Load `model_dir` into vLLM with the project's chat template applied (as `models.load_model` does).

        `protocol` defaults to the folder's declaration (`profiles.declared_profile`). `llm_kwargs` go to `vllm.LLM`:
        on GPUs typically `tensor_parallel_size`, `gpu_memory_utilization`,
        `max_model_len` and `dtype`. Prefix caching is on, and two images and no video per prompt are allowed (so
        vLLM reserves no memory for video), unless given otherwise. The image processor's pixel bounds are always
        passed as `mm_processor_kwargs` (other keys there pass through; different bounds are refused: they would
        break the visual-token accounting).
        """
        vllm = _import_vllm()
        from visionthink.models.processor import VisionThinkProcessor, chat_template

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json)")
        processor = VisionThinkProcessor.from_pretrained(str(path))
        processor.chat_template = chat_template()  # the protocol's rendering, whatever the folder ships
        processor.tokenizer.chat_template = processor.chat_template
        llm_kwargs.setdefault("enable_prefix_caching", True)
        llm_kwargs.setdefault("limit_mm_per_prompt", {"image": MAX_ASSISTANT_TURNS, "video": 0})
        llm_kwargs["mm_processor_kwargs"] = pixel_bounds(processor, llm_kwargs.get("mm_processor_kwargs"))
        llm = vllm.LLM(model=str(path), **llm_kwargs)
        return cls(llm, processor, sampling, batch_size=batch_size,
                   protocol=protocol if protocol is not None else declared_profile(path))

    def run(self, requests: list, mode: str = "visionthink", progress=None,
            sampling: SamplingConfig | None = None) -> list[Episode]:
        """Episodes for all requests, in order; `sampling` overrides the engine's for this call."""
        return run_episodes(self if sampling is None else self.with_sampling(sampling), requests, mode, progress)

    def with_sampling(self, sampling: SamplingConfig) -> VLLMEngine:
        """The same engine (same `vllm.LLM`) choosing tokens by `sampling`."""
        engine = copy.copy(self)
        engine.sampling = sampling
        engine._seeds = random.Random(sampling.seed)
        return engine

    def session(self) -> _VLLMSession:
        return _VLLMSession(self)

    def banned_ids(self, forbid_call: bool) -> list[int]:
        """Token ids a turn may not produce: vision placeholders, and the tool call where it is forbidden."""
        return [*self.never_ids, self.tool_call_id] if forbid_call else list(self.never_ids)

    def sampling_params(self, forbid_call: bool, token_logprobs: bool = False):
        """One request's `vllm.SamplingParams`: greedy is temperature 0; unset knobs keep vLLM's defaults.
        `token_logprobs` asks for the log-probability of each token written (`logprobs=0`)."""
        vllm = _import_vllm()
        s = self.sampling
        options = {"logprobs": 0} if token_logprobs else {}
        if s.do_sample:
            options |= {"temperature": s.temperature, "top_p": s.top_p}
            if s.top_k > 0:
                options["top_k"] = s.top_k
            if s.seed is not None:
                options["seed"] = self._seeds.getrandbits(63)
        return vllm.SamplingParams(
            max_tokens=s.max_new_tokens,
            temperature=options.pop("temperature", 0.0),
            stop_token_ids=list(self.stop_ids),
            skip_special_tokens=False,
            logit_bias={token: BANNED_BIAS for token in self.banned_ids(forbid_call)},
            **options,
        )

    def confidence_of(self, completion, text: str) -> float | None:
        """The answer confidence of one vLLM completion (`engines.confidence`), from the log-probabilities it carries
        (`sampling_params(token_logprobs=True)`); a completion without them is an error, never a silent None."""
        if ANSWER_OPEN not in text:
            return None
        steps = getattr(completion, "logprobs", None)
        ids = list(completion.token_ids)
        if steps is None or len(steps) != len(ids):
            raise VisionThinkError("vLLM returned no log-probability for each written token (asked with logprobs=0); "
                                   "the answer's confidence cannot be read")
        probs = [math.exp(step[token].logprob) for step, token in zip(steps, ids, strict=True)]
        return answer_confidence(token_texts(self.processor.tokenizer, ids), probs)


class _VLLMSession:
    """One batch: vLLM's prefix cache is the only state kept between turns."""

    def __init__(self, engine: VLLMEngine):
        self.engine = engine

    def generate(self, rows: list[int], conversations: list[list[Message]],
                 forbid_call: list[bool], answer_confidence: bool = False) -> list[Generated]:
        engine = self.engine
        prompts = [{"prompt": render_text(engine.processor, messages, add_generation_prompt=True,
                                          protocol=engine.protocol),
                    "multi_modal_data": {"image": images_in(messages)}} for messages in conversations]
        params = [engine.sampling_params(forbid, answer_confidence) for forbid in forbid_call]
        newline = int(engine.protocol.turn_end_newline)
        generated = []
        for output in engine.llm.generate(prompts, params, use_tqdm=False):
            completion = output.outputs[0]
            text = completion.text
            for marker in END_MARKERS:
                text = text.removesuffix(marker)
            n = len(completion.token_ids)
            confidence = engine.confidence_of(completion, text) if answer_confidence else None
            generated.append(Generated(text, n, sequence_tokens=len(output.prompt_token_ids or []) + n + newline,
                                       answer_confidence=confidence))
        return generated


def pixel_bounds(processor, given: dict | None = None) -> dict:
    """`mm_processor_kwargs` for vLLM: `given` with the processor's `min_pixels` and `max_pixels`."""
    grid = processor.grid
    bounds = {"min_pixels": grid.min_pixels, "max_pixels": grid.max_pixels}
    given = dict(given or {})
    for key, value in bounds.items():
        if given.get(key, value) != value:
            raise VisionThinkError(f"mm_processor_kwargs {key}={given[key]} differs from the model folder's "
                                   f"{value}: vLLM would resize the views away from the loop's token accounting")
    return {**given, **bounds}
