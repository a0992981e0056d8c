"""Server settings: the one place where their defaults are written (`visionthink serve` reads them here)."""

from __future__ import annotations

from dataclasses import dataclass

SERVED_MODES = ("visionthink", "low", "full", "zoom", "raw")
"""What `visionthink_mode` may ask for. `zoom` runs on the zoom variant of the served protocol (`profiles.with_zoom`);
the oracles are not served: they need the truth (`needs_high_res`, the answer's box), which a request does not carry."""


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
    """Text in all messages and tools together, checked before the (exact) token count after templating."""
    remote_fetch_timeout: float = 10.0
    """Seconds for a whole remote image fetch (connect, headers and body), not per read."""
    remote_fetch_concurrency: int = 4
    """Remote fetches running at once, in a thread pool of their own."""
    decode_concurrency: int = 4
    """Images decoded at once, in a thread pool of their own."""
    max_connections: int = 256
    """Open connections; more are closed as soon as they are accepted (file descriptors stay bounded)."""
    header_timeout: float = 10.0
    """Seconds a new connection may take to send its request headers before it is closed."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open."""
