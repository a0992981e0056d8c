"""Serving: an OpenAI-compatible VisionThink server with dynamic batching and a web page.

Needs FastAPI and uvicorn (`pip install 'visionthink[serve]'`). `serve.config` (the settings)
imports neither, so the command line reads its defaults without them.

Modules: `config` settings, `schemas` request models, `checks` server-side checks,
`security` the API key and Host checks, `fetch` image URLs, `context` the token count, `service`
one request's work, `decoder` large images in worker processes, `batcher` and `worker` the model
side, `replies` the OpenAI reply shapes, `limits` the body limits, `server` uvicorn and connection
limits, `background` a server in a thread, `app` the routes.
"""

from __future__ import annotations

from typing import Any

from visionthink.serve.config import ServeConfig

__all__ = ["ApiError", "ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("ApiError", "create_app", "serve"):
        from visionthink.serve import app

        return getattr(app, name)
    raise AttributeError(name)
