"""The project's own error types: every expected failure raises one of these."""


class VisionThinkError(Exception):
    """Base class for errors a user can act on (bad input, missing files, bad config)."""


class ImageError(VisionThinkError):
    """An image could not be loaded or is not acceptable (corrupt, too large, not an image)."""


class ProtocolError(VisionThinkError):
    """A conversation does not follow the VisionThink protocol."""


class ModelError(VisionThinkError):
    """A model folder is missing or incomplete."""
