"""The remote engine end to end against `transformers serve` (the stand-in for `vllm serve`), on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import transformers

from visionthink.engines.factory import EngineOptions, build_engine
from visionthink.engines.remote import RemoteEngineError
from visionthink.engines.transformers_engine import Request, TransformersEngine

TRANSFORMERS = tuple(int(part) for part in transformers.__version__.split(".")[:2])
"""Checked: 5.25 keeps the reasoning as `reasoning_content`; 5.17 drops it."""


def test_shipped_folders_load_through_auto_processor(shipped_model_dir):
    """What lets `transformers serve --trust-remote-code` see the images: without it, AutoProcessor falls back to
    the tokenizer and the server silently answers from the text alone."""
    from transformers import AutoProcessor

    from visionthink.models.processor import VisionThinkProcessor

    for folder in sorted(shipped_model_dir.parent.iterdir()):
        if (folder / "config.json").is_file():
            processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
            assert type(processor).__name__ == VisionThinkProcessor.__name__, folder
            assert processor.image_processor is not None


def test_save_pretrained_writes_the_auto_processor(shipped_model, tmp_path):
    _, processor = shipped_model
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_visionthink.VisionThinkProcessor"}
    assert "from visionthink.models.processor import VisionThinkProcessor" in (
        tmp_path / "processing_visionthink.py").read_text()


@pytest.fixture(scope="module")
def transformers_server(shipped_model_dir, tmp_path_factory):
    """`transformers serve --trust-remote-code checkpoints/tiny-synth` on a free loopback port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(shipped_model_dir),
               "--trust-remote-code", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--log-level", "warning"]
    # transformers 5.17 answers /v1/models with a 500 while its hub cache folder does not exist
    cache = tmp_path_factory.mktemp("hf-cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(cache)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited: {process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("transformers serve did not start within 120 s")
            time.sleep(0.5)
    yield url + "/v1"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "low", "visionthink"])
def test_remote_episodes_on_transformers_serve_equal_local_ones(transformers_server, shipped_model, shipped_model_dir,
                                                                synth_items, mode):
    """Answers, resizes, visual tokens and the server's prompt token counts (checked on every reply against the
    local rendering) equal the local engine's."""
    requests = [Request(item.image, item.question, item.needs_high_res) for item in synth_items]
    # `served_model`: 5.17 lists no forced model; `model`: the folder served (its protocol, not the default model's)
    remote = build_engine(EngineOptions(engine="remote", base_url=transformers_server, concurrency=4,
                                        served_model=str(shipped_model_dir), model=str(shipped_model_dir)))
    if TRANSFORMERS < (5, 25):  # its server drops the <think> text it parses out of a reply
        with pytest.raises(RemoteEngineError, match="drops part of the turn"):
            remote.run(requests, mode)
        return
    got = remote.run(requests, mode)
    want = TransformersEngine(*shipped_model).run(requests, mode)
    if mode == "visionthink":
        assert any(e.resized for e in want)
    for g, w in zip(got, want, strict=True):
        assert (g.answer, g.resized, g.well_formed) == (w.answer, w.resized, w.well_formed)
        assert g.visual_tokens_per_turn == w.visual_tokens_per_turn
        assert (g.prompt_tokens, g.generated_tokens) == (w.prompt_tokens, w.generated_tokens)
