"""VisionThink: a VLM sees a quarter of the pixels first and asks for full resolution when it needs it."""

from visionthink.compat import check_transformers
from visionthink.errors import ImageError, ModelError, ProtocolError, VisionThinkError

check_transformers()

__version__ = "0.1.0"

__all__ = ["ImageError", "ModelError", "ProtocolError", "VisionThinkError", "__version__"]
