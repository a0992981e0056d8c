"""VisionThink episodes on vLLM in-process (GPU), with prefix caching so the resize turn reuses the first.

Optional: needs `pip install 'visionthink[vllm]'` and a CUDA GPU; vLLM is imported only when
an engine is built, and a clear `VisionThinkError` says so when it is missing. Not exercised
by the CPU test suite.

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

import time
from pathlib import Path

from visionthink import protocol
from visionthink.engines.kv_decoder import SamplingConfig
from visionthink.errors import VisionThinkError
from visionthink.images import load_image, make_views
from visionthink.tokens import render_text

MODES = ("full", "low", "visionthink", "oracle")


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
    """Episodes on an in-process `vllm.LLM` (prefix caching on)."""

    def __init__(self, llm, processor, sampling: SamplingConfig | None = None):
        self.llm = llm
        self.processor = processor
        self.sampling = sampling or SamplingConfig()
        tokenizer = processor.tokenizer
        self.tool_call_id = tokenizer.convert_tokens_to_ids("<tool_call>")
        self.never_ids = [tokenizer.convert_tokens_to_ids(t) for t in (
            "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")]
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, sampling: SamplingConfig | None = None,
                        **llm_kwargs) -> VLLMEngine:
        """Load `model_dir` into vLLM; `llm_kwargs` go to `vllm.LLM` (gpu_memory_utilization, dtype, ...)."""
        vllm = _import_vllm()
        from visionthink.models.processor import VisionThinkProcessor, chat_template

        processor = VisionThinkProcessor.from_pretrained(str(model_dir))
        if processor.chat_template is None:
            processor.chat_template = chat_template()
        llm_kwargs.setdefault("enable_prefix_caching", True)
        llm_kwargs.setdefault("limit_mm_per_prompt", {"image": protocol.MAX_ASSISTANT_TURNS})
        llm = vllm.LLM(model=str(model_dir), **llm_kwargs)
        return cls(llm, processor, sampling)

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

    def run(self, requests: list, mode: str = "visionthink", progress=None) -> list[protocol.Episode]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        grid = self.processor.grid
        rows = []
        for request in requests:
            if mode == "oracle" and request.needs_high_res is None:
                raise ValueError("oracle mode needs `needs_high_res` on every request")
            views = make_views(load_image(request.image), grid)
            first = views.high if mode == "full" else views.low
            rows.append({"request": request, "views": views, "messages": protocol.first_turn(request.question, first),
                         "turns": [], "visual": [grid.tokens(*first.size)],
                         "full_tokens": grid.tokens(*views.high.size), "generated": 0, "seconds": {}})
        active = list(range(len(rows)))
        for turn_index in range(protocol.MAX_ASSISTANT_TURNS):
            if not active:
                break
            began = time.perf_counter()
            prompts, params = [], []
            for index in active:
                row = rows[index]
                prompts.append({
                    "prompt": render_text(self.processor, row["messages"], add_generation_prompt=True),
                    "multi_modal_data": {"image": protocol.images_in(row["messages"])},
                })
                params.append(self._params(self._banned(mode, row["request"], turn_index)))
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            elapsed = (time.perf_counter() - began) / len(active)
            still = []
            for index, output in zip(active, outputs, strict=True):
                row = rows[index]
                completion = output.outputs[0]
                row["seconds"][f"turn{turn_index + 1}"] = elapsed
                row["generated"] += len(completion.token_ids)
                text = completion.text
                for marker in ("<|im_end|>", "<|endoftext|>"):
                    text = text.removesuffix(marker)
                turn = protocol.parse_turn(text)
                if mode == "oracle" and turn_index == 0 and row["request"].needs_high_res and turn.kind != "resize":
                    text = protocol.resize_text(turn.think or "")
                    turn = protocol.parse_turn(text)
                row["messages"].append(protocol.assistant_turn(text))
                row["turns"].append(turn)
                row["prompt_tokens"] = len(output.prompt_token_ids or [])
                if turn_index + 1 == protocol.MAX_ASSISTANT_TURNS or mode in ("full", "low") or turn.kind == "answer":
                    continue
                if turn.kind == "resize":
                    row["messages"].append(protocol.tool_turn(row["views"].high))
                    row["visual"].append(grid.tokens(*row["views"].high.size))
                    still.append(index)
                elif "<tool_call>" in text:
                    row["messages"].append(protocol.error_turn(turn.error or "malformed tool call"))
                    still.append(index)
            active = still
        if progress is not None:
            progress.update(len(requests))
        return [self._episode(row, mode) for row in rows]

    def _banned(self, mode: str, request, turn_index: int) -> list[int]:
        if mode in ("full", "low") or (mode == "oracle" and turn_index == 0 and not request.needs_high_res):
            return [*self.never_ids, self.tool_call_id]
        return list(self.never_ids)

    @staticmethod
    def _episode(row: dict, mode: str) -> protocol.Episode:
        turns = row["turns"]
        final = turns[-1]
        return protocol.Episode(
            messages=row["messages"],
            answer=final.answer if final.kind == "answer" else None,
            resized=any(t.kind == "resize" for t in turns),
            turns=turns,
            visual_tokens_per_turn=row["visual"],
            full_res_visual_tokens=row["full_tokens"],
            prompt_tokens=row.get("prompt_tokens", 0),
            generated_tokens=row["generated"],
            seconds=row["seconds"],
            mode=mode,
        )

