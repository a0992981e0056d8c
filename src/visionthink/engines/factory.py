"""Build the engine a command runs on: `transformers` (local), `vllm` (in-process, GPU) or `remote` (any
OpenAI-compatible server: `vllm serve`, `transformers serve`, `visionthink serve`).

Every engine runs the same loop (`engines.base.run_episodes`) and returns the same `protocol.Episode`s; only where
the assistant turns are written differs. `EngineOptions` holds what the command line says about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionthink.errors import VisionThinkError

if TYPE_CHECKING:
    from visionthink.engines.kv_decoder import SamplingConfig

ENGINES = ("transformers", "vllm", "remote")
REMOTE_API_KEY_ENV = "VISIONTHINK_REMOTE_API_KEY"
"""Where `--engine remote` reads the upstream server's key when no option gives it."""


@dataclass
class EngineOptions:
    """Which engine, on which model, and how it reaches its GPUs or its server."""

    engine: str = "transformers"
    """`transformers`, `vllm` or `remote`."""
    model: str | Path | None = None
    """The model folder (default: the shipped tiny checkpoint). Under `remote` only its processor is read: the pixel
    grid, the tokenizer (banned ids, the rendering check); it must be the folder the server serves."""
    protocol: str | None = None
    """The conversation format (`profiles`; default `visionthink`)."""
    batch_size: int = 32
    device: str | None = None
    """`transformers`: where the model runs (default: a GPU when visible)."""
    dtype: str | None = None
    """`transformers` and `vllm`: the weights' dtype (default: the checkpoint's)."""
    attn_implementation: str | None = None
    """`transformers`: `sdpa`, `flash_attention_2` or `eager` (default: transformers' choice)."""
    device_map: str | None = None
    """`transformers`: `auto` spreads a model larger than one GPU over the visible ones."""
    tensor_parallel_size: int | None = None
    """`vllm`: GPUs one model is split over."""
    gpu_memory_utilization: float | None = None
    """`vllm`: the share of GPU memory vLLM may take."""
    base_url: str | None = None
    """`remote`: the server, e.g. http://127.0.0.1:8000/v1."""
    api_key: str | None = None
    """`remote`: the server's key (default: $VISIONTHINK_REMOTE_API_KEY)."""
    served_model: str | None = None
    """`remote`: the model id on the server (default: the first one `/v1/models` lists)."""
    concurrency: int = 8
    """`remote`: requests in flight at once."""

    def check(self) -> None:
        """Refuse an unknown engine, remote options without `remote`, and `remote` without `--base-url`."""
        if self.engine not in ENGINES:
            raise VisionThinkError(f"unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")
        if self.engine == "remote" and not self.base_url:
            raise VisionThinkError("--engine remote needs --base-url (the server's address, e.g. "
                                   "http://127.0.0.1:8000/v1)")
        if self.engine != "remote" and (self.base_url or self.served_model):
            raise VisionThinkError("--base-url and --served-model belong to --engine remote")
        if self.concurrency < 1:
            raise VisionThinkError("--concurrency must be at least 1")


def build_engine(options: EngineOptions, sampling: SamplingConfig | None = None, protocol=None):
    """The engine `options` name, with `sampling` (default: greedy, the profile's turn budget); `protocol` overrides
    `options.protocol` (a profile or a name); with neither, the profile the model folder declares
    (`profiles.declared_profile`)."""
    from visionthink.profiles import declared_profile

    options.check()
    protocol = protocol if protocol is not None else options.protocol
    if protocol is None and options.engine == "remote":  # the local engines read the declaration themselves
        try:
            protocol = declared_profile(options.model)
        except ValueError as error:
            raise VisionThinkError(str(error)) from None
    if options.engine == "transformers":
        from visionthink.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(
            options.model, device=options.device, dtype=options.dtype,
            attn_implementation=options.attn_implementation, device_map=options.device_map,
            batch_size=options.batch_size, protocol=protocol, sampling=sampling)
    if options.engine == "vllm":
        from visionthink.engines.vllm_engine import VLLMEngine
        from visionthink.models.loading import default_model_dir

        llm_kwargs = {key: value for key, value in (
            ("dtype", options.dtype), ("tensor_parallel_size", options.tensor_parallel_size),
            ("gpu_memory_utilization", options.gpu_memory_utilization)) if value is not None}
        return VLLMEngine.from_pretrained(options.model or default_model_dir(), sampling=sampling, protocol=protocol,
                                          batch_size=options.batch_size, **llm_kwargs)
    from visionthink.engines.remote import RemoteEngine
    from visionthink.models.loading import load_processor

    return RemoteEngine(options.base_url, model=options.served_model,
                        api_key=options.api_key or os.environ.get(REMOTE_API_KEY_ENV) or None,
                        sampling=sampling, processor=load_processor(options.model), max_workers=options.concurrency,
                        batch_size=max(options.batch_size, options.concurrency), protocol=protocol)


def with_profile(engine, profile):
    """`engine` under another conversation format, sharing its model, vLLM instance or server."""
    import copy

    from visionthink.engines.transformers_engine import TransformersEngine
    from visionthink.profiles import get_profile

    if isinstance(engine, TransformersEngine):  # its drafting helpers are built for its profile
        return TransformersEngine(engine.model, engine.processor, sampling=engine.sampling,
                                  batch_size=engine.batch_size, protocol=profile)
    other = copy.copy(engine)
    other.protocol = get_profile(profile)
    return other


def is_local(engine) -> bool:
    """Whether the engine's model runs in this process through transformers (the server's raw mode needs one)."""
    return hasattr(engine, "model") and hasattr(engine.model, "register_forward_pre_hook")

