"""The transformers releases this package runs on, and the names that differ between them.

Checked from package metadata only, so importing this module (or `visionthink`) stays cheap.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from typing import Any

TRANSFORMERS_SUPPORTED = ">=5.17,<6"
"""The transformers releases the test suite runs on: 5.17 (the GPU stack) up to the newest 5.x."""

_LOWEST = (5, 17)
_TOO_NEW = (6,)
_CACHE_RENAMED = (5, 24)
"""From this release the models' forward takes its KV cache as `cache`; before it, `past_key_values`.
An unknown keyword is swallowed by `**kwargs`, so the wrong name loses the cache without an error."""


def release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "5.17.0rc1+local" -> (5, 17, 0)."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() < len(part):
            break
    return tuple(numbers)


@functools.cache
def installed_transformers() -> str:
    """The installed transformers version, read from its metadata without importing it."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        raise ImportError(f"visionthink needs transformers{TRANSFORMERS_SUPPORTED}, which is not installed") from None


def check_transformers(version: str | None = None) -> tuple[int, ...]:
    """The installed (or given) transformers release; a one-line ImportError when it is outside the supported range."""
    version = installed_transformers() if version is None else version
    found = release(version)
    if not _LOWEST <= found < _TOO_NEW:
        raise ImportError(f"visionthink supports transformers{TRANSFORMERS_SUPPORTED}; found transformers {version} "
                          f"(pip install 'transformers{TRANSFORMERS_SUPPORTED}')")
    return found


def cache_keyword(version: str | None = None) -> str:
    """The keyword the models' forward takes the KV cache under, for the installed (or given) transformers."""
    return "cache" if check_transformers(version) >= _CACHE_RENAMED else "past_key_values"


CACHE_KEYWORD = cache_keyword()


def cache_arg(cache: Any) -> dict[str, Any]:
    """`model(..., **cache_arg(cache))` passes a KV cache under the installed transformers' name for it."""
    return {CACHE_KEYWORD: cache}
