"""Accuracy judges behind the `Judge` interface, and `make_judge`, which builds one from a short spec.

Every judge sees only the question, the ground truth and the final answer text (never the image)
and returns one `Verdict` per request, in order, without ever raising. The judges live one per
module: `rule_judge` (no model; the rule eval scores by), `http_judge` (any OpenAI-compatible
endpoint), `local_judge` (a local causal LM); `judge_prompt` holds the prompt and the score parser,
`judge_cache` the one append-only verdict cache. Their public names are importable from here.
"""

from __future__ import annotations

from typing import Any

from visionthink.grading import parse_options as parse_choices
from visionthink.rewards.http_judge import BATCH_TIMEOUT, MAX_REPLY_BYTES, HTTPJudge
from visionthink.rewards.judge_base import Judge
from visionthink.rewards.judge_cache import CachedJudge, JudgeCache
from visionthink.rewards.judge_prompt import JUDGE_PROMPT, JUDGE_SYSTEM, parse_judgement, parse_score, render_prompt
from visionthink.rewards.local_judge import LocalJudge
from visionthink.rewards.rule_judge import FALLBACKS, Fallback, RuleJudge

__all__ = [
    "BATCH_TIMEOUT", "FALLBACKS", "JUDGE_PROMPT", "JUDGE_SYSTEM", "MAX_REPLY_BYTES", "CachedJudge", "Fallback",
    "HTTPJudge", "JudgeCache", "LocalJudge", "RuleJudge", "make_judge", "parse_choices", "parse_judgement",
    "parse_score", "render_prompt",
]


def make_judge(spec: str, **kwargs: Any) -> Judge:
    """A judge from a short spec: ``rule``, ``http:<base_url>[#model]`` (or a bare URL), ``local:<path>``.

    Keyword arguments go to the judge's constructor.
    """
    spec = spec.strip()
    if spec == "rule":
        return RuleJudge(**kwargs)
    if spec.startswith("local:"):
        path = spec.removeprefix("local:")
        if not path:
            raise ValueError("local judge needs a path: local:<folder>")
        return LocalJudge(path, **kwargs)
    url = None
    if spec.startswith("http:") and not spec.startswith("http://"):
        url = spec.removeprefix("http:")
    elif spec.startswith(("http://", "https://")):
        url = spec
    if url is not None:
        url, _, model = url.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"http judge needs a URL: http:<http(s)://host[:port]/v1>[#model], got {spec!r}")
        if model:
            kwargs["model"] = model
        return HTTPJudge(url, **kwargs)
    raise ValueError(f"unknown judge spec {spec!r}: use 'rule', 'http:<base_url>[#model]' or 'local:<path>'")
