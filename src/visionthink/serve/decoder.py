"""Large images decode in worker processes: one that outlasts its deadline, or whose request is over, is killed.

A worker is `python -m visionthink.serve.decoder`: it reads a request (limits and the encoded
bytes) from stdin, decodes with `images.load_image_within` under an address-space limit (or only
reads the size in the header), and writes the RGB pixels (or the error) to stdout, both in a
fixed binary framing (no pickle: the worker handles hostile bytes, the server only reads sizes
and pixels from it). Its memory is returned to the system when it is killed, so a costly decode
leaves the server's RSS as it was.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time

from PIL import Image

from visionthink.errors import ImageError

_REQUEST = struct.Struct("<QQQQ")  # max_pixels, factor, max_input_pixels, length of the data
_REPLY = struct.Struct("<BIIQ")  # 0 ok / 1 refused, width, height, length of the pixels or the message
_POLL = 0.05
DECODER_NICENESS = 10


class DecodeWorkers:
    """Up to `size` worker processes, started when first needed and reused; `decode` may be called from threads."""

    def __init__(self, size: int, deadline: float, memory_bytes: int | None = 2 << 30):
        self.size = size
        self.deadline = deadline
        self.memory_bytes = memory_bytes
        self.killed = 0
        """Workers killed at a deadline or for an abandoned request."""
        self._idle: queue.SimpleQueue[subprocess.Popen] = queue.SimpleQueue()
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def decode(self, data: bytes, max_pixels: int, factor: int, max_input_pixels: int,
               stop: threading.Event | None = None) -> Image.Image:
        """`images.load_image_within(data, ...)` in a worker; an `ImageError` past `deadline` seconds or once `stop`
        is set (the worker is killed then)."""
        width, height, payload = self._ask(data, max_pixels, factor, max_input_pixels, stop)
        if len(payload) != width * height * 3:
            raise ImageError("image data: the decoder returned a malformed image")
        return Image.frombytes("RGB", (width, height), payload)

    def _ask(self, data: bytes, max_pixels: int, factor: int, max_input_pixels: int,
             stop: threading.Event | None) -> tuple[int, int, bytes]:
        """One request to an idle worker (`max_pixels` 0: the header's size only): (width, height, RGB pixels)."""
        worker = self._take()
        try:
            _write(worker, _REQUEST.pack(max_pixels, factor, max_input_pixels, len(data)) + data)
            end = time.monotonic() + self.deadline
            status, width, height, length = _REPLY.unpack(_read(worker, _REPLY.size, end, stop))
            payload = _read(worker, length, end, stop)
        except BaseException:
            self._kill(worker)
            raise
        self._idle.put(worker)
        if status:
            raise ImageError(payload.decode("utf-8", "replace"))
        return width, height, payload

    def pixels(self, data: bytes, stop: threading.Event | None = None) -> int:
        """The pixels `data`'s header declares, read in a worker (Pillow's parse of a costly structure holds the
        GIL); an `ImageError` as for `decode`."""
        image = self._ask(data, 0, 0, 0, stop)
        return image[0] * image[1]

    def close(self) -> None:
        with self._lock:
            workers = list(self._running)
        for worker in workers:
            self._kill(worker, counted=False)

    def _take(self) -> subprocess.Popen:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        if self.memory_bytes:
            environment["VISIONTHINK_DECODE_MEMORY"] = str(self.memory_bytes)
        worker = subprocess.Popen([sys.executable, "-m", "visionthink.serve.decoder"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)
        with self._lock:
            self._running.add(worker)
        return worker

    def _kill(self, worker: subprocess.Popen, counted: bool = True) -> None:
        with self._lock:
            self._running.discard(worker)
        if worker.poll() is None:
            self.killed += counted
            worker.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=5)
        for pipe in (worker.stdin, worker.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _write(worker: subprocess.Popen, data: bytes) -> None:
    try:
        worker.stdin.write(data)
        worker.stdin.flush()
    except OSError:
        raise ImageError("image data: the decoder stopped") from None


def _read(worker: subprocess.Popen, size: int, end: float, stop: threading.Event | None) -> bytes:
    """`size` bytes from the worker, or `ImageError` once `end` has passed, `stop` is set or the worker has died."""
    chunks, got, fd = [], 0, worker.stdout.fileno()
    while got < size:
        left = end - time.monotonic()
        if left <= 0:
            raise ImageError("image data: decoding took longer than its deadline; refused")
        if stop is not None and stop.is_set():
            raise ImageError("image data: the request is over; decoding stopped")
        ready, _, _ = select.select([fd], [], [], min(left, _POLL))
        if not ready:
            continue
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            raise ImageError("image data: the decoder died (out of memory or crashed); refused")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _serve_requests() -> None:
    """The worker's loop: one request, one reply, until stdin closes."""
    import io
    import resource
    import warnings

    from visionthink.images import ALLOWED_FORMATS, load_image_within

    limit = int(os.environ.get("VISIONTHINK_DECODE_MEMORY", "0"))
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.nice(DECODER_NICENESS)  # large decodes yield the CPU to the server's own work (small requests, the model)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while header := source.read(_REQUEST.size):
        max_pixels, factor, max_input_pixels, length = _REQUEST.unpack(header)
        data = source.read(length)
        try:
            if not max_pixels:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                        sink.write(_REPLY.pack(0, image.width, image.height, 0))
            else:
                image = load_image_within(data, max_pixels, factor=factor, max_input_pixels=max_input_pixels)
                pixels = image.tobytes()
                sink.write(_REPLY.pack(0, image.width, image.height, len(pixels)) + pixels)
        except Exception as error:  # noqa: BLE001 - every failure is the request's refusal
            message = (str(error) if isinstance(error, ImageError) else
                       f"image data: cannot decode ({type(error).__name__})").encode()
            sink.write(_REPLY.pack(1, 0, 0, len(message)) + message)
        sink.flush()


if __name__ == "__main__":
    _serve_requests()
