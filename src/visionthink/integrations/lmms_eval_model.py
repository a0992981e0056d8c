"""lmms-eval model class that answers each request with a VisionThink episode.

lmms-eval (the `lmms-eval` extra; it runs on the CPU torch too, see docs/lmms-eval.md) is imported lazily here:
this module imports without it. When lmms-eval is importable the class derives from its `lmms` base and returns its
`GenerationResult`s; otherwise from `_LocalLMMBase` and returns the same-shaped `_LocalGenerationResult`s, so the
request handling can be used and tested anywhere.

lmms-eval finds the class by name once it is registered (see `register`, `manifest` and docs/lmms-eval.md):

    python -m visionthink.integrations.lmms_eval_model --model visionthink \
        --model_args pretrained=checkpoints/tiny-synth,mode=visionthink --tasks chartqa --batch_size 8
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

MODEL_NAME = "visionthink"
"""The name `--model` takes."""
CLASS_PATH = "visionthink.integrations.lmms_eval_model.VisionThinkLMM"
MODES = ("visionthink", "full", "low")
"""Modes an lmms-eval run can use (`oracle` needs labels that lmms-eval documents lack)."""
PROTOCOLS = ("visionthink", "release")
"""Conversation formats (`profiles`): the project's, or the authors' prompts for their released checkpoints."""
MODEL_ARGS = ("pretrained", "mode", "protocol", "batch_size", "max_new_tokens", "engine", "device", "dtype",
              "attn_implementation", "device_map", "tensor_parallel_size", "gpu_memory_utilization", "base_url",
              "api_key", "served_model", "concurrency", "records_path")
"""What `--model_args` takes (lmms-eval adds `batch_size`, `max_batch_size` and `device` itself)."""

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


@dataclass
class _LocalTokenCounts:
    """lmms-eval 0.7.3's `TokenCounts`, for when lmms-eval is not installed."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The counts that are known."""
        return {key: value for key, value in (("input_tokens", self.input_tokens),
                                              ("output_tokens", self.output_tokens),
                                              ("reasoning_tokens", self.reasoning_tokens)) if value is not None}


@dataclass
class _LocalGenerationResult:
    """lmms-eval 0.7.3's `GenerationResult`, for when lmms-eval is not installed."""

    text: str
    token_counts: _LocalTokenCounts | None = None


def _parse_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _lmms_api() -> tuple[type, type, type, bool]:
    """lmms-eval's model base, `GenerationResult` and `TokenCounts`, or the local stand-ins."""
    try:
        from lmms_eval.api.instance import GenerationResult, TokenCounts
        from lmms_eval.api.model import lmms
    except ImportError:
        return _LocalLMMBase, _LocalGenerationResult, _LocalTokenCounts, False
    return lmms, GenerationResult, TokenCounts, True


_Base, GenerationResult, TokenCounts, HAS_LMMS_EVAL = _lmms_api()
"""`HAS_LMMS_EVAL`: whether the class below derives from lmms-eval's own base (an lmms-eval with `GenerationResult`,
0.7.3 tested); `GenerationResult` and `TokenCounts`: lmms-eval's, or the stand-ins with the same fields."""


@dataclass
class EpisodeTokenCounts(TokenCounts):
    """lmms-eval's `TokenCounts` of one episode (input: the prompt tokens of its final context, images included;
    output: the tokens it generated over all turns) plus its visual tokens and whether it resized, which lmms-eval's
    samples log then records beside them."""

    visual_tokens: int | None = None
    full_res_visual_tokens: int | None = None
    resized: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = dict(super().to_dict())
        counts.update({key: value for key, value in (("visual_tokens", self.visual_tokens),
                                                     ("full_res_visual_tokens", self.full_res_visual_tokens),
                                                     ("resized", self.resized)) if value is not None})
        return counts


def _as_int(value: Any, name: str, default: int) -> int:
    if value is None or value == "" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1 or (number != value and not isinstance(value, str)):  # 0, -1, 2.5
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _as_text(value: Any) -> str | None:
    """A string option as lmms-eval's parser left it (it turns `123` into an int): None when unset."""
    return None if value is None or value == "" else str(value)


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


def engine_options(pretrained: Any = None, protocol: str = "visionthink", batch_size: int = 8,
                   engine: str = "transformers", device: Any = None, dtype: Any = None,
                   attn_implementation: Any = None, device_map: Any = None, tensor_parallel_size: Any = None,
                   gpu_memory_utilization: Any = None, base_url: Any = None, api_key: Any = None,
                   served_model: Any = None, concurrency: Any = None):
    """`engines.factory.EngineOptions` from model_args values as lmms-eval parsed them (checked)."""
    from visionthink.engines.factory import EngineOptions

    memory = None
    if gpu_memory_utilization not in (None, ""):
        try:
            memory = float(gpu_memory_utilization)
        except (TypeError, ValueError):
            memory = -1.0
        if not 0 < memory <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    options = EngineOptions(
        engine=str(engine), model=_as_text(pretrained), protocol=protocol, batch_size=batch_size,
        device=_as_text(device), dtype=_as_text(dtype), attn_implementation=_as_text(attn_implementation),
        device_map=_as_text(device_map), gpu_memory_utilization=memory,
        tensor_parallel_size=None if tensor_parallel_size in (None, "") else _as_int(
            tensor_parallel_size, "tensor_parallel_size", 1),
        base_url=_as_text(base_url), api_key=_as_text(api_key), served_model=_as_text(served_model),
        concurrency=_as_int(concurrency, "concurrency", 8))
    options.check()
    return options


class VisionThinkLMM(_Base):
    """An lmms-eval "simple" model: each `generate_until` request becomes one VisionThink episode.

    Arguments (from `--model_args key=value,...`; lmms-eval adds `batch_size`, `max_batch_size` and
    `device` from its own flags, so give the batch size with `--batch_size`, not in `--model_args`):

    - `pretrained`: model folder (default: the shipped default, `checkpoints/tiny-ladder`); under `engine=remote`,
      the folder the server serves, of which only the processor is read;
    - `mode`: `visionthink` (low-res first, the model may ask for full resolution), `full` or `low`;
    - `protocol`: `visionthink` or `release` (the authors' prompts, for their released checkpoints);
    - `batch_size`: episodes run together (`auto` keeps the default, 8);
    - `max_new_tokens`: generated tokens per assistant turn (default: the engine's, 64);
    - `engine`: `transformers` (default), `vllm` or `remote` (from Python, also an engine object, used as it is);
    - `device` (default: a GPU when visible), `dtype`, `attn_implementation`, `device_map`: `transformers`;
      `dtype`, `tensor_parallel_size`, `gpu_memory_utilization`: `vllm`;
    - `base_url`, `api_key` (default: $VISIONTHINK_REMOTE_API_KEY), `served_model`, `concurrency`: `remote`;
    - `records_path`: a JSONL file to append `records` to.

    The task's own `max_new_tokens` is not used (a VisionThink episode has its own turn budget); its `until` stop
    sequences are applied to the final answer. Each answer goes back as a `GenerationResult` whose `token_counts`
    (`EpisodeTokenCounts`) hold the episode's prompt and generated tokens, visual tokens and resize. What each request
    cost is also kept in `records`, in request order, and summed up by `cost_summary()`.
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, mode: str = "visionthink", protocol: str = "visionthink",
                 batch_size: Any = 8, max_new_tokens: Any = None, engine: Any = "transformers",
                 device: str | None = None, dtype: str | None = None, attn_implementation: str | None = None,
                 device_map: str | None = None, tensor_parallel_size: Any = None, gpu_memory_utilization: Any = None,
                 base_url: str | None = None, api_key: Any = None, served_model: Any = None, concurrency: Any = None,
                 max_batch_size: Any = None, records_path: str | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for {MODEL_NAME}: {', '.join(sorted(unknown))} (expected "
                             f"{', '.join(MODEL_ARGS)})")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.mode = mode
        self.protocol = protocol
        self.batch_size = _as_int(batch_size, "batch_size", 8)
        self.records: list[dict[str, Any]] = []
        """One dict per answered request, in request order: task, split, doc_id, answer, resized, visual_tokens,
        full_res_visual_tokens, visual_tokens_per_turn, prompt_tokens, generated_tokens, seconds."""
        self.options = None
        """The `EngineOptions` the engine was built from (None when an engine object was given)."""
        if isinstance(engine, str):
            from visionthink.engines import factory

            self.options = engine_options(
                pretrained=pretrained, protocol=protocol, batch_size=self.batch_size, engine=engine, device=device,
                dtype=dtype, attn_implementation=attn_implementation, device_map=device_map,
                tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                base_url=base_url, api_key=api_key, served_model=served_model, concurrency=concurrency)
            engine = factory.build_engine(self.options, sampling=self._sampling(max_new_tokens))
        self.engine = engine
        self.protocol = getattr(getattr(engine, "protocol", None), "name", protocol)
        self.pretrained = pretrained
        self.records_path = Path(records_path) if records_path else None

    @staticmethod
    def _sampling(max_new_tokens: Any):
        """Greedy decoding; None (the engine's default) unless `max_new_tokens` is given."""
        if max_new_tokens in (None, "") or (isinstance(max_new_tokens, str) and max_new_tokens.startswith("auto")):
            return None
        from visionthink.engines.kv_decoder import SamplingConfig

        return SamplingConfig(max_new_tokens=_as_int(max_new_tokens, "max_new_tokens", 1))

    # ------------------------------------------------------------------ lmms-eval API

    def generate_until(self, requests: Sequence[Any]) -> list[Any]:
        """`GenerationResult`s (final answer and token counts) for lmms-eval `Instance`s whose `args` are
        `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`, in request order."""
        from visionthink.engines.base import Request

        results: list[Any] = []
        step = getattr(self.engine, "batch_size", None) or self.batch_size
        for start in range(0, len(requests), step):
            chunk = requests[start : start + step]
            unpacked = [self._unpack(instance) for instance in chunk]
            episodes = self.engine.run([Request(image, context) for context, _, image, _ in unpacked], self.mode)
            new: list[dict[str, Any]] = []
            for (context, gen_kwargs, _, meta), episode in zip(unpacked, episodes, strict=True):
                answer = _cut_at(self._final_text(episode), (gen_kwargs or {}).get("until")).strip()
                results.append(GenerationResult(text=answer, token_counts=EpisodeTokenCounts(
                    input_tokens=episode.prompt_tokens, output_tokens=episode.generated_tokens,
                    visual_tokens=episode.visual_tokens, full_res_visual_tokens=episode.full_res_visual_tokens,
                    resized=episode.resized)))
                new.append({**meta, "answer": answer, "resized": episode.resized,
                            "visual_tokens": episode.visual_tokens,
                            "full_res_visual_tokens": episode.full_res_visual_tokens,
                            "visual_tokens_per_turn": list(episode.visual_tokens_per_turn),
                            "prompt_tokens": episode.prompt_tokens, "generated_tokens": episode.generated_tokens,
                            "seconds": episode.total_seconds})
                hook = getattr(self, "cache_hook", None)
                if hook is not None and hasattr(hook, "add_partial"):
                    hook.add_partial("generate_until", (context, gen_kwargs), answer)
            self.records.extend(new)
            self._save(new)
        for task, numbers in self.cost_summary().items():
            logger.info("%s %s: %s", MODEL_NAME, task, numbers)
        return results

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

    def _save(self, records: list[dict[str, Any]]) -> None:
        """Append `records` to `records_path`, a batch at a time, so a long run keeps what it did."""
        if self.records_path is None or not records:
            return
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with self.records_path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, default=str) + "\n" for record in records)

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
        raise ImportError("lmms-eval is not installed (or failed to import); install lmms-eval 0.7.3 with "
                          "`pip install -e '.[lmms-eval]'` and then `pip uninstall -y torchvision` "
                          "(docs/lmms-eval.md)")
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
