"""Shared fixtures: the shipped checkpoint, a random tiny model (in memory and on disk), one CPU thread per process."""

from __future__ import annotations

import json
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from visionthink import protocol
from visionthink.engines.base import Generated
from visionthink.images import PixelGrid

torch.set_num_threads(int(os.environ.get("VISIONTHINK_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
LADDER_DIR = REPO / "checkpoints" / "tiny-ladder"
"""The shipped ladder model (answer, zoom or resize), the default of `ask`, `demo` and `serve`."""
TINY_GRID = PixelGrid(28, 28 * 28, 168 * 112)
"""The tiny models' grid (the shipped checkpoint's processor): 24 visual tokens at most."""


def pick_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port():
    """A function that returns a loopback port nothing listens on (call it once per server or launch)."""
    return pick_free_port


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    """The trained tiny checkpoint shipped in the repo (VISIONTHINK_TEST_MODEL overrides it)."""
    path = Path(os.environ.get("VISIONTHINK_TEST_MODEL", REPO / "checkpoints" / "tiny-synth"))
    assert (path / "config.json").is_file(), f"shipped checkpoint missing at {path}"
    return path


@pytest.fixture(scope="session")
def shipped_model(shipped_model_dir):
    from visionthink.models import load_model

    return load_model(shipped_model_dir)


@pytest.fixture(scope="session")
def random_tiny():
    """A randomly initialised tiny model and its processor (tokenizer trained as in `train sft`)."""
    from visionthink.models import build_tiny_model, build_tiny_tokenizer
    from visionthink.train.sft_data import tokenizer_corpus

    model, processor = build_tiny_model(build_tiny_tokenizer(tokenizer_corpus()))
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_dir(random_tiny, tmp_path_factory) -> Path:
    """`random_tiny` saved to a folder, for what loads a model by path (training loads its own copy from it)."""
    model, processor = random_tiny
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def synth_items():
    from visionthink.data import synth

    return synth.split_items("test", 12, seed=0)


def words_of(text: str) -> str:
    """A wording's lower-cased words without case or punctuation, written out again (not taken from the code under
    test): the key on which trained and held-out wordings must differ."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def qwen_smart_resize(width: int, height: int) -> tuple[int, int]:
    """Qwen2.5-VL's smart-resize rule, written out again (not taken from the code under test): both sides multiples
    of 28, the area within [3136, 12845056] pixels, the aspect kept. Returns (width, height)."""
    factor, low, high = 28, 3136, 12845056
    w, h = max(factor, round(width / factor) * factor), max(factor, round(height / factor) * factor)
    if w * h > high:
        beta = math.sqrt(width * height / high)
        w, h = math.floor(width / beta / factor) * factor, math.floor(height / beta / factor) * factor
    elif w * h < low:
        beta = math.sqrt(low / (width * height))
        w, h = math.ceil(width * beta / factor) * factor, math.ceil(height * beta / factor) * factor
    return w, h


def resize_text(think: str) -> str:
    """The canonical resize-call turn of the `visionthink` profile."""
    from visionthink.profiles import VISIONTHINK

    return VISIONTHINK.call_text(think, "resize_image", {"action": "resize"})


def full_tokens(image) -> int:
    """Full-resolution visual tokens of a synthetic world image (its sizes are on the 56 px grid already)."""
    return (image.width // 28) * (image.height // 28)


class BlindBackend:
    """A backend that reads no probabilities: no `decides_by_threshold` (as RemoteEngine and VLLMEngine), no
    `records_confidence` (as no shipped engine); no turn may run (a request it cannot honour must be refused first)."""

    grid = None
    batch_size = 4

    def session(self):
        raise AssertionError("no turn may run")


@dataclass
class ScriptedBackend:
    """A backend of the loop (`engines.base.run_episodes`) that writes each turn from a script: question (the first
    line of the user's text) -> the texts of its turns, or one list of texts for every row. It records
    (question, turn, forbid_call) per row and turn; each turn reports 7 tokens written over `100 + turn` in all."""

    script: dict[str, list[str]] | list[str]
    protocol: object = None
    grid: PixelGrid = TINY_GRID
    batch_size: int = 4
    calls: list[tuple[str, int, bool]] = field(default_factory=list)

    def session(self):
        return self

    def generate(self, rows, conversations, forbid_call):
        outputs = []
        for messages, forbid in zip(conversations, forbid_call, strict=True):
            question = protocol.assistant_text(messages[1]).split("\n")[0]
            turn = sum(m["role"] == "assistant" for m in messages)
            self.calls.append((question, turn, forbid))
            texts = self.script if isinstance(self.script, list) else self.script[question]
            outputs.append(Generated(texts[turn], generated_tokens=7, sequence_tokens=100 + turn))
        return outputs


class QuietHandler(BaseHTTPRequestHandler):
    """A handler for the tests' loopback HTTP servers: it logs nothing, and `reply` sends a whole response."""

    def reply(self, status: int, body: bytes | dict | list, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]):
    """`handler` serving on a loopback port from a thread; yields the server (`url`: its http://127.0.0.1:port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
