"""The release's pixel range and views: `clamp_to_pixel_range`, the processor-native `full` view, the release's
halved low view, and the token arithmetic at real Qwen2.5-VL sizes."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS, clamp_to_pixel_range


def test_release_pixel_range_constants():
    assert (RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS) == (512 * 512, 2048 * 2048)


@pytest.mark.parametrize(("size", "expected"), [
    ((4000, 3000), (int(4000 * math.sqrt(2048 * 2048 / 12e6)), int(3000 * math.sqrt(2048 * 2048 / 12e6)))),
    ((100, 50), (int(100 * math.sqrt(512 * 512 / 5000)), int(50 * math.sqrt(512 * 512 / 5000)))),
    ((1280, 960), (1280, 960)),
    ((512, 512), (512, 512)),
    ((2048, 2048), (2048, 2048)),
])
def test_clamp_to_pixel_range_scales_as_the_release(size, expected):
    image = Image.new("RGB", size, (10, 20, 30))
    clamped = clamp_to_pixel_range(image, RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS)
    assert clamped.size == expected
    if size == expected:
        assert clamped is image
    assert clamped.width * clamped.height <= RELEASE_MAX_PIXELS
    assert abs(clamped.width / clamped.height - size[0] / size[1]) < 0.02


def test_clamp_defaults_to_the_release_range():
    assert clamp_to_pixel_range(Image.new("RGB", (3000, 3000))).size == (2048, 2048)
    assert clamp_to_pixel_range(Image.new("RGB", (256, 256))).size == (512, 512)
