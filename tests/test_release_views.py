"""The release's pixel range and views: `clamp_to_pixel_range`, the processor-native `full` view, the release's
halved low view, and the token arithmetic at real Qwen2.5-VL sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionthink.images import (
    RELEASE_MAX_PIXELS,
    RELEASE_MIN_PIXELS,
    ImageError,
    PixelGrid,
    clamp_to_pixel_range,
    release_half_size,
    release_min_side_size,
)
from visionthink.profiles import RELEASE, VISIONTHINK


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


# ---------------------------------------------------------------- the processor's views, at real Qwen2.5-VL sizes

QWEN = PixelGrid(28, 3136, 12845056)
"""Qwen2.5-VL's real bounds (preprocessor_config.json of the released 7B: min_pixels, max_pixels; 14 px patches
merged 2x2)."""


def smart_resize_tokens(width: int, height: int) -> int:
    """Qwen2-VL's smart-resize arithmetic, written out: each side rounded to 28 px, then scaled into the pixel range
    (not needed at these sizes: every one of them lands in range)."""
    w, h = round(width / 28) * 28, round(height / 28) * 28
    assert 3136 <= w * h <= 12845056
    return (w // 28) * (h // 28)


# (size, full tokens, low tokens under `visionthink`, low tokens under `release`)
SIZES = [
    ((1280, 960), 46 * 34, 23 * 17, 23 * 17),  # full 1288x952; low 644x476 (half of full) = 644x476 (640x480 snapped)
    ((3000, 2000), 107 * 71, 54 * 36, 54 * 36),  # full 2996x1988; low 1512x1008 from 1498x994 and from 1500x1000
    ((500, 4000), 18 * 143, 9 * 72, 9 * 71),  # full 504x4004; low 252x2016 from 252x2002, 252x1988 from 250x2000
]


def test_smart_resize_arithmetic_by_hand():
    assert [smart_resize_tokens(*size) for size, *_ in SIZES] == [1564, 7597, 2574]
    assert smart_resize_tokens(640, 480) == 391 and smart_resize_tokens(1500, 1000) == 1944
    assert smart_resize_tokens(250, 2000) == 639 and smart_resize_tokens(252, 2002) == 648


@pytest.mark.parametrize("profile", [VISIONTHINK, RELEASE], ids=lambda p: p.name)
@pytest.mark.parametrize(("size", "full", "low", "release_low"), SIZES, ids=lambda v: str(v))
def test_view_tokens_equal_the_smart_resize_arithmetic(profile, size, full, low, release_low):
    views = profile.views(Image.new("RGB", size, "white"), QWEN)
    expected_low = release_low if profile is RELEASE else low
    assert QWEN.tokens(*views.high.size) == full == smart_resize_tokens(*size)
    assert QWEN.tokens(*views.low.size) == expected_low
    assert 0.22 <= expected_low / full <= 0.28
    assert views.high.size == QWEN.high_size(*size)
    assert views.low.size == QWEN.low_size(*size, halve_original=profile.halves_original)
    half = (size[0] // 2, size[1] // 2) if profile is RELEASE else (views.high.width // 2, views.high.height // 2)
    assert QWEN.tokens(*views.low.size) == smart_resize_tokens(*half)


def test_the_3000x2000_full_view_is_no_longer_on_a_56_px_grid():
    """Before, both views were snapped to 56 px so that the low view was exactly a quarter: 3024x2016, 7776 tokens
    where Qwen2.5-VL sees 2996x1988, 7597; 500x4000 gave 2556 where it sees 2574."""
    assert QWEN.high_size(3000, 2000) == (2996, 1988)
    assert QWEN.high_size(500, 4000) == (504, 4004)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000))
def test_snap_is_the_processors_smart_resize(width, height):
    """Step for step wherever the processor's own result keeps to its budget; where it would not, ours shrinks the
    long side until it fits (the processor then keeps our size; it would resize its own result again)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    assume(max(width, height) / min(width, height) <= 200)
    for grid in (QWEN, PixelGrid(), PixelGrid(28, 28 * 28, 168 * 112)):
        theirs_h, theirs_w = smart_resize(height, width, 28, grid.min_pixels, grid.max_pixels)
        try:
            ours = grid.snap(width, height)
        except ImageError as error:  # on the grid the view itself would be over 200:1, which the processor refuses
            assert "200:1 aspect limit" in str(error)
            continue
        if theirs_w * theirs_h <= grid.max_pixels:
            assert ours == (theirs_w, theirs_h), grid
        else:
            assert ours[0] * ours[1] <= grid.max_pixels and ours <= (theirs_w, theirs_h)
        assert smart_resize(ours[1], ours[0], 28, grid.min_pixels, grid.max_pixels) == (ours[1], ours[0])


def _qwen_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(size={"shortest_edge": QWEN.min_pixels, "longest_edge": QWEN.max_pixels})


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [
    (1280, 960), (500, 4000), pytest.param((3000, 2000), marks=pytest.mark.slow)], ids=str)
def test_views_are_what_the_processor_makes_pixel_for_pixel(size):
    """The full view through the processor is the original through the processor (the same patches, the same
    `image_grid_thw`); the release's low view is the release's halved image through the processor."""
    processor = _qwen_processor()
    image = _noise(*size)
    views = RELEASE.views(image, QWEN)
    halved = image.resize((size[0] // 2, size[1] // 2), Image.Resampling.LANCZOS)
    for shown, seen in ((image, views.high), (halved, views.low)):
        expected = processor(images=[shown], return_tensors="np")
        got = processor(images=[seen], return_tensors="np")
        np.testing.assert_array_equal(got["image_grid_thw"], expected["image_grid_thw"])
        np.testing.assert_array_equal(got["pixel_values"], expected["pixel_values"])
        assert int(np.prod(got["image_grid_thw"][0])) // 4 == QWEN.tokens(*seen.size)


def test_release_views_of_a_thin_image_enlarge_it_as_the_release_does():
    """A side under 28 px: the release's evaluation scales it up to 28 before the processor, the low view after
    halving."""
    assert release_min_side_size(20, 1000) == (28, 1400)
    assert release_half_size(40, 3000) == (28, 2100)  # 20x1500, then x1.4
    views = RELEASE.views(Image.new("RGB", (40, 3000)), QWEN)
    assert views.high.size == QWEN.snap(40, 3000) and views.low.size == QWEN.snap(28, 2100)
    assert VISIONTHINK.views(Image.new("RGB", (40, 3000)), QWEN).low.size == QWEN.snap(14, 1498)  # half of 28x2996


# ---------------------------------------------------------------- the tiny model's images: unchanged


TINY = PixelGrid(28, 28 * 28, 168 * 112)


@pytest.mark.parametrize("size", [(112, 112), (168, 112), (112, 168)])
def test_tiny_model_images_are_on_both_grids_and_keep_their_views(size):
    """The synthetic world's images are the full view as they are, and the low view is their LANCZOS half, under
    both protocols: the tiny model's figures cannot move."""
    image = _noise(*size)
    expected_low = image.resize((size[0] // 2, size[1] // 2), Image.Resampling.LANCZOS)
    for profile in (VISIONTHINK, RELEASE):
        views = profile.views(image, TINY)
        assert views.high is image
        assert views.low.size == (size[0] // 2, size[1] // 2)
        assert views.low.tobytes() == expected_low.tobytes()
        assert 4 * TINY.tokens(*views.low.size) == TINY.tokens(*views.high.size)


def test_an_image_whose_view_would_pass_200_to_1_is_refused_clearly():
    """29x5615 is under 200:1 but comes to 28x5628 on the grid, which the processor refuses: a clear error instead."""
    with pytest.raises(ImageError, match="28x5628 on the 28 px grid, over the processor's 200:1 aspect limit"):
        QWEN.snap(29, 5615)
