"""A local causal LM as accuracy judge (e.g. a small Qwen3), prompted like `HTTPJudge`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionthink.rewards.judge_base import Judge, JudgeRequest, Verdict
from visionthink.rewards.judge_cache import JudgeCache, plan_batch
from visionthink.rewards.judge_prompt import JUDGE_PROMPT, JUDGE_SYSTEM, parse_judgement, render_prompt
from visionthink.rewards.rule_judge import Fallback, RuleJudge, check_fallback, fallback_verdict


class LocalJudge(Judge):
    """A local causal LM as judge (e.g. a small Qwen3), prompted like `HTTPJudge`, greedy decoding.

    `model` is a folder for ``AutoModelForCausalLM`` (loaded with ``local_files_only``: nothing is
    downloaded) or an already loaded model, with `tokenizer` then required. Replies are parsed for
    the last ``Score: 0|1`` or ``[[YES]]``/``[[NO]]``; a reply with neither, or a generation error,
    falls back as in `HTTPJudge`. Verdicts are cached as in `HTTPJudge` (`cache_path`: a JSONL file,
    under the model's name). `stats` counts ``requests``, ``cache_hits``, ``failures``.
    """

    name = "local"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        fallback: Fallback = "rule",
        cache: bool = True,
        prompt_template: str = JUDGE_PROMPT,
        system_prompt: str | None = JUDGE_SYSTEM,
        chat_template_kwargs: dict[str, Any] | None = None,
        device: str | None = None,
        dtype: Any = "auto",
        rule_judge: RuleJudge | None = None,
        cache_path: str | Path | None = None,
    ):
        if isinstance(model, str | os.PathLike):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        elif tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.fallback = check_fallback(fallback)
        self.use_cache = cache
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.rule = rule_judge or RuleJudge()
        judge_name = str(getattr(model, "name_or_path", "") or self.name)
        self.cache = JudgeCache(cache_path if cache else None, judge=judge_name)
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0}

    def prompt_text(self, request: JudgeRequest) -> str:
        """The full model input for one request (the chat template when the tokenizer has one)."""
        user = render_prompt(request, self.prompt_template)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": user}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
            )
        system = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        return f"{system}{user}\n"

    def grade(self, requests: list[JudgeRequest]) -> list[Verdict]:
        requests = list(requests)
        self.stats["requests"] += len(requests)
        verdicts, pending, hits = plan_batch(requests, self.cache if self.use_cache else None)
        self.stats["cache_hits"] += hits
        keys = list(pending)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            chunk_requests = [requests[pending[key][0]] for key in chunk]
            graded = self._judge(chunk_requests)
            for key, verdict in zip(chunk, graded, strict=True):
                for index in pending[key]:
                    verdicts[index] = verdict
            if self.use_cache:
                self.cache.add(zip(chunk, graded, strict=True))
        return [v for v in verdicts if v is not None]

    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        try:
            replies = self.generate([self.prompt_text(request) for request in requests])
        except Exception as error:  # noqa: BLE001 - the judge must never raise
            self.stats["failures"] += len(requests)
            message = f"generation failed: {type(error).__name__}: {error}"[:300]
            return [fallback_verdict(self.fallback, self.rule, r, message) for r in requests]
        verdicts = []
        for request, reply in zip(requests, replies, strict=True):
            score = parse_judgement(reply)
            if score is None:
                self.stats["failures"] += 1
                error = "judge reply has no 'Score: 0|1' nor [[YES]]/[[NO]]"
                verdicts.append(fallback_verdict(self.fallback, self.rule, request, error, reply))
            else:
                verdicts.append(Verdict(float(score), ok=True, raw=reply))
        return verdicts

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuations of `prompts` (left-padded batch), special tokens removed."""
        import torch

        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        previous_side = getattr(tokenizer, "padding_side", "left")
        tokenizer.padding_side = "left"
        try:
            batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = previous_side
        device = next(self.model.parameters()).device
        batch = {name: tensor.to(device) for name, tensor in batch.items() if name in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
