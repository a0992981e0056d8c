"""lmms-eval model class that answers each request with a VisionThink episode.

lmms-eval (the `lmms-eval` extra) pulls a CUDA build of torch, so it stays out of the default install
and is imported lazily here: this module imports without it. When lmms-eval is importable the class
derives from its `lmms` base; otherwise from `_LocalLMMBase`, a stand-in with the same few attributes,
so the request handling can be used and tested anywhere.

lmms-eval finds the class by name once it is registered (see `register`, `manifest` and
docs/lmms-eval.md):

    python -m visionthink.integrations.lmms_eval_model --model visionthink \
        --model_args pretrained=checkpoints/tiny-synth,mode=visionthink --tasks chartqa --batch_size 8
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

MODEL_NAME = "visionthink"
"""The name `--model` takes."""
CLASS_PATH = "visionthink.integrations.lmms_eval_model.VisionThinkLMM"
MODES = ("visionthink", "full", "low")
"""Modes an lmms-eval run can use (`oracle` needs labels that lmms-eval documents lack)."""

logger = logging.getLogger(__name__)


class _LocalLMMBase:
    """What the adapter uses of lmms-eval's `lmms` base, for when lmms-eval is not installed."""

    is_simple: bool = True

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1
        self.task_dict: dict = {}
        self.cache_hook = None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """Build from `key=value,key=value` (a simple version of lmms-eval's parser)."""
        args = {}
        for part in filter(None, (p.strip() for p in arg_string.split(","))):
            key, _, value = part.partition("=")
            args[key.strip()] = _parse_value(value.strip())
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size


def _parse_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _lmms_base() -> tuple[type, bool]:
    try:
        from lmms_eval.api.model import lmms
    except ImportError:
        return _LocalLMMBase, False
    return lmms, True


_Base, HAS_LMMS_EVAL = _lmms_base()
"""`HAS_LMMS_EVAL`: whether the class below derives from lmms-eval's own base."""


def _as_int(value: Any, name: str, default: int) -> int:
    if value is None or value == "" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _first_image(visuals: Any, where: str) -> Image.Image:
    """The request's image: VisionThink answers about one image, so extra ones are dropped (with a warning)."""
    if isinstance(visuals, Image.Image):
        return visuals
    items = list(visuals) if isinstance(visuals, Iterable) and not isinstance(visuals, (str, bytes, dict)) else []
    images = [item for item in items if isinstance(item, Image.Image)]
    if not images:
        raise ValueError(f"{where}: VisionThink needs one image per request, but doc_to_visual gave "
                         f"{type(visuals).__name__} {str(visuals)[:80]!r} (text-only, video or audio tasks "
                         "are not supported)")
    if len(images) > 1:
        logger.warning("%s: %d images; VisionThink uses the first", where, len(images))
    return images[0]


def _cut_at(text: str, until: Any) -> str:
    """Cut `text` at the first stop sequence from the task's `until` (a string or a list of them)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if isinstance(stop, str) and stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


class VisionThinkLMM(_Base):
    """An lmms-eval "simple" model: each `generate_until` request becomes one VisionThink episode.

    Arguments (from `--model_args key=value,...`; lmms-eval adds `batch_size`, `max_batch_size` and
    `device` from its own flags, so give the batch size with `--batch_size`, not in `--model_args`):

    - `pretrained`: model folder (default: the shipped `checkpoints/tiny-synth`);
    - `mode`: `visionthink` (low-res first, the model may ask for full resolution), `full` or `low`;
    - `batch_size`: episodes run together (`auto` keeps the default, 8);
    - `max_new_tokens`: generated tokens per assistant turn (default 64, the engine's default);
    - `device`, `dtype`: passed to `visionthink.models.load_model`;
    - `records_path`: a JSONL file to append `records` to (lmms-eval itself does not save them).

    The task's own `max_new_tokens` is not used (a VisionThink episode has its own turn budget); its
    `until` stop sequences are applied to the final answer. What each request cost is kept in
    `records`, in request order, and summed up by `cost_summary()`.
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, mode: str = "visionthink", batch_size: Any = 8,
                 max_new_tokens: Any = None, device: str | None = None, dtype: str = "auto",
                 max_batch_size: Any = None, records_path: str | None = None, engine=None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for {MODEL_NAME}: {', '.join(sorted(unknown))} (expected "
                             "pretrained, mode, batch_size, max_new_tokens, device, dtype, records_path)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.batch_size = _as_int(batch_size, "batch_size", 8)
        self.records: list[dict[str, Any]] = []
        """One dict per answered request, in request order: task, split, doc_id, answer, resized,
        visual_tokens, full_res_visual_tokens, visual_tokens_per_turn, generated_tokens, seconds."""
        if engine is None:
            from visionthink.engines.kv_decoder import SamplingConfig
            from visionthink.engines.transformers_engine import TransformersEngine
            from visionthink.models import load_model

            default = SamplingConfig().max_new_tokens
            sampling = SamplingConfig(max_new_tokens=_as_int(max_new_tokens, "max_new_tokens", default))
            model, processor = load_model(pretrained or None, dtype=dtype, device=device or "cpu")
            engine = TransformersEngine(model, processor, sampling=sampling, batch_size=self.batch_size)
        self.engine = engine
        self.pretrained = pretrained
        self.records_path = Path(records_path) if records_path else None

    # ------------------------------------------------------------------ lmms-eval API

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Final answers for lmms-eval `Instance`s whose `args` are
        `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`, in request order."""
        from visionthink.engines.transformers_engine import Request

        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            unpacked = [self._unpack(instance) for instance in chunk]
            batch = [Request(image, context) for context, _, image, _ in unpacked]
            episodes = self.engine.run(batch, self.mode)
            for (context, gen_kwargs, _, meta), episode in zip(unpacked, episodes, strict=True):
                answer = _cut_at(self._final_text(episode), (gen_kwargs or {}).get("until")).strip()
                answers.append(answer)
                self.records.append({**meta, "answer": answer, "resized": episode.resized,
                                     "visual_tokens": episode.visual_tokens,
                                     "full_res_visual_tokens": episode.full_res_visual_tokens,
                                     "visual_tokens_per_turn": list(episode.visual_tokens_per_turn),
                                     "generated_tokens": episode.generated_tokens,
                                     "seconds": episode.total_seconds})
                hook = getattr(self, "cache_hook", None)
                if hook is not None and hasattr(hook, "add_partial"):
                    hook.add_partial("generate_until", (context, gen_kwargs), answer)
        new = self.records[len(self.records) - len(answers):]
        if self.records_path is not None and new:
            self.records_path.parent.mkdir(parents=True, exist_ok=True)
            with self.records_path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record, default=str) + "\n" for record in new)
        for task, numbers in self.cost_summary().items():
            logger.info("%s %s: %s", MODEL_NAME, task, numbers)
        return answers

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME}: loglikelihood is not supported; VisionThink only generates "
                                  "answers, so use tasks whose output_type is generate_until")

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME}: multi-round generation is not supported; VisionThink runs its "
                                  "own two-turn resize loop per request, so use generate_until tasks")

    # ------------------------------------------------------------------ reporting

    def cost_summary(self) -> dict[str, dict[str, float]]:
        """Per task: requests, mean visual tokens, their share of full resolution, and the resize ratio."""
        summary: dict[str, dict[str, float]] = {}
        for task in dict.fromkeys(r["task"] for r in self.records):
            rows = [r for r in self.records if r["task"] == task]
            full = sum(r["full_res_visual_tokens"] for r in rows)
            summary[task] = {
                "n": len(rows),
                "visual_tokens": sum(r["visual_tokens"] for r in rows) / len(rows),
                "visual_tokens_vs_full": sum(r["visual_tokens"] for r in rows) / full if full else 0.0,
                "resize_ratio": sum(r["resized"] for r in rows) / len(rows),
            }
        return summary

    # ------------------------------------------------------------------ helpers

    def _unpack(self, instance: Any) -> tuple[str, dict, Image.Image, dict[str, Any]]:
        args = instance.args if hasattr(instance, "args") else instance
        if len(args) < 6:
            raise ValueError(f"{MODEL_NAME}: expected generate_until arguments (context, gen_kwargs, doc_to_visual, "
                             f"doc_id, task, split), got {len(args)} values")
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args[:6]
        where = f"{task}/{split}/{doc_id}"
        try:
            doc = self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as error:
            raise KeyError(f"{MODEL_NAME}: no document {where} in task_dict ({error!r})") from error
        image = _first_image(doc_to_visual(doc), where)
        return str(context), dict(gen_kwargs or {}), image, {"task": task, "split": split, "doc_id": doc_id}

    @staticmethod
    def _final_text(episode) -> str:
        """The episode's answer; without one, the last assistant turn's text (minus special markers)."""
        if episode.answer is not None:
            return episode.answer
        from visionthink import protocol

        texts = [protocol.assistant_text(m) for m in episode.messages if m.get("role") == "assistant"]
        if not texts:
            return ""
        extracted = protocol.extract_answer(texts[-1])
        if extracted is not None:
            return extracted
        text = texts[-1]
        for marker in ("<|im_end|>", "<|endoftext|>"):
            text = text.replace(marker, "")
        return text


# ---------------------------------------------------------------------- registration


def manifest():
    """lmms-eval's `ModelManifest` for this class: the payload of an `lmms_eval.models` entry point."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> type:
    """Make `--model visionthink` resolve to `VisionThinkLMM` in this process; returns the class.

    Registers with lmms-eval's model registry (`lmms_eval.models.MODEL_REGISTRY_V2`, used by its
    evaluator since 0.5) and with the older `lmms_eval.api.registry.register_model` table.
    """
    if not HAS_LMMS_EVAL:
        raise ImportError("lmms-eval is not installed (or failed to import); install it with "
                          "`pip install -e '.[lmms-eval]'` on a machine with a CUDA torch")
    from lmms_eval.api.registry import register_model

    register_model(MODEL_NAME)(VisionThinkLMM)
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
    except ImportError:  # an lmms-eval without the v2 registry: the table above is what it reads
        return VisionThinkLMM
    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    return VisionThinkLMM


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m visionthink.integrations.lmms_eval_model ARGS`: lmms-eval's CLI with `visionthink` registered."""
    import sys

    from visionthink.integrations import lmms_eval_model

    lmms_eval_model.register()
    from lmms_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
