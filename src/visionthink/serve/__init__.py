"""Serving: an OpenAI-compatible VisionThink server with dynamic batching and a web page.

Needs FastAPI and uvicorn (`pip install 'visionthink[serve]'`). See `visionthink.serve.app`.
"""

from visionthink.serve.app import ApiError, ServeConfig, create_app, serve

__all__ = ["ApiError", "ServeConfig", "create_app", "serve"]
