"""Server settings: the one place where their defaults are written (`visionthink serve` reads them here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionthink.modes import MODES
from visionthink.serve.examples import default_examples_dir

SERVED_MODES = (*(name for name, mode in MODES.items() if mode.calls != "oracle"), "raw")
"""What `visionthink_mode` may ask for: the modes (`visionthink.modes`) where a served model's profile offers their
tools, and `raw`. The oracles are not served: they need the truth (`needs_high_res`, the answer's box), which a
request does not carry."""


@dataclass
class ServeConfig:
    """Server settings (the `visionthink serve` flags)."""

    model_name: str = "visionthink"
    api_key: str | None = None
    allow_remote_images: bool = False
    allow_private_remote_images: bool = False
    """Let remote fetching reach loopback/private addresses (tests only: this is what SSRF needs)."""
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    """Pixels of one image, checked from its header before decoding (a 4000x4000 photo fits)."""
    max_request_pixels: int = 32_000_000
    """Pixels of all images of one request together, checked before decoding."""
    max_images: int = 8
    timeout: float = 60.0
    """Seconds for one request, from reading its body to its reply; work still running after it is cancelled."""
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_queue: int = 1024
    max_new_tokens: int = 512
    """Upper bound for a request's `max_tokens` (per assistant turn)."""
    max_text_chars: int = 100_000
    """Text in all messages, tool calls and tools together, checked before the (exact) token count after templating."""
    max_messages: int = 512
    """Messages of one request, counted before the request is validated or templated."""
    max_content_parts: int = 1024
    """Content parts of all messages together."""
    max_tool_calls: int = 256
    """Tool calls in all assistant messages together."""
    max_tools: int = 128
    """Tools a request offers."""
    max_json_values: int = 200_000
    """Objects, arrays and list items in a body, counted in its bytes before it is parsed (a body of 20 MB of
    `{}` would otherwise become ~400 MB of dictionaries)."""
    max_json_depth: int = 40
    """Nesting of one tool or tool call (the chat template recurses through tool schemas)."""
    remote_fetch_timeout: float = 10.0
    """Seconds for a whole remote image fetch (connect, headers and body), not per read."""
    remote_fetch_concurrency: int = 4
    """Remote fetches running at once, in a thread pool of their own."""
    decode_concurrency: int = 4
    """Images decoded at once, in a thread pool of their own; half as many large ones (over 2 MP), in processes."""
    decode_timeout: float = 10.0
    """Seconds one large image may take to decode; its worker process is killed then (and when its request is over)."""
    max_connections: int = 256
    """Open connections; more are closed as soon as they are accepted (file descriptors stay bounded)."""
    header_timeout: float = 10.0
    """Seconds a new connection may take to send its request headers before it is closed."""
    body_timeout: float = 10.0
    """Seconds a request body may take after its headers, plus a second for every `min_body_rate` bytes it has
    delivered; a body slower than that is answered 408 and its connection closed."""
    min_body_rate: int = 256 * 1024
    """Bytes per second that earn a body more time (see `body_timeout`)."""
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    """Request bodies held by the server at once (from their headers to their replies); more are refused with 503,
    so the memory of bodies and what is parsed from them stays bounded at the connection cap."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (besides IP addresses and localhost) a server without an API key answers; "*" for any. Other
    Host headers are refused, so that a DNS-rebinding page cannot reach a keyless server through a browser."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open."""
    default_mode: str | None = None
    """The mode of a request that names none (`visionthink_mode`) and offers no tools; None: the served model's own
    (`modes.own_mode`: zoom for a model that can zoom, else visionthink)."""
    tool_threshold: float | None = None
    """The tool threshold of a request that names none (`visionthink_tool_threshold`): in [0, 1], the model calls its
    tool when its P(tool) at the first-turn decision is at least this; None keeps the greedy decision. Only the
    transformers engine honours one (the server refuses to start with one on another engine)."""
    escalate_below: float | None = None
    """The answer-confidence threshold of a request that names none (`visionthink_escalate_below`): in [0, 1], a
    first-turn answer less confident than this is withdrawn for a resize (`engines.confidence`); None: answers stand.
    Every engine honours one (the remote engine asks its server for `logprobs`)."""
    examples_dir: Path | None = field(default_factory=default_examples_dir)
    """The folder of the web page's example gallery (`serve.examples`): by default the checkout's `examples/` when
    this package runs from a checkout, else None (no gallery)."""
