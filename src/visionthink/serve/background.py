"""Serve an app from a thread on a free loopback port, as `visionthink serve` would (tests, benchmarks)."""

from __future__ import annotations

import threading
import time

import uvicorn

from visionthink.serve.config import ServeConfig
from visionthink.serve.server import uvicorn_config


class BackgroundServer:
    """`with BackgroundServer(app) as server: ... server.url ...` (the app's `state.config` sets the limits)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        config = getattr(app.state, "config", None) or ServeConfig()
        self.server = uvicorn.Server(uvicorn_config(app, config, host, port, log_level="warning"))
        self.host = host
        self.startup_timeout = startup_timeout
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> BackgroundServer:
        self.thread = threading.Thread(target=self.server.run, name="visionthink-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
