"""Tests for `visionthink.images`: safe loading, mode conversion, grid snapping and the two views."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from visionthink.errors import ImageError
from visionthink.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    PixelGrid,
    high_view,
    load_image,
    low_view,
    make_views,
)

ORIENTATION = 0x0112
SMALL_GRID = PixelGrid(28, 56 * 56, 112 * 112)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == size
    return np.asarray(image)


# ---------------------------------------------------------------- sources


def test_load_from_path_bytes_bytearray_and_pil_agree(tmp_path):
    original = noise_image()
    data = encode(original)
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    expected = np.asarray(original)
    for source in (path, str(path), data, bytearray(data), original, Image.open(io.BytesIO(data))):
        pixels = assert_rgb(load_image(source), original.size)
        np.testing.assert_array_equal(pixels, expected)


def test_unsupported_source_type_is_an_image_error():
    with pytest.raises(ImageError, match="cannot load an image from a int"):
        load_image(42)


# ---------------------------------------------------------------- EXIF, frames


def test_exif_orientation_6_rotates_and_swaps_size(tmp_path):
    array = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high
    array[:, :40] = (255, 0, 0)  # left half red
    array[:, 40:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(array), "JPEG", exif=exif, quality=95)
    assert Image.open(io.BytesIO(data)).size == (80, 40)  # stored unrotated

    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    for source in (data, path):
        pixels = assert_rgb(load_image(source), (40, 80))
        top, bottom = pixels[:30].reshape(-1, 3).mean(0), pixels[50:].reshape(-1, 3).mean(0)
        # a clockwise turn puts the left (red) half on top and the right (blue) half at the bottom
        assert top[0] > 200 and top[2] < 60
        assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_1_keeps_size():
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    data = encode(noise_image(80, 40), "JPEG", exif=exif)
    assert load_image(data).size == (80, 40)


def test_animated_gif_takes_the_first_frame():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (20, 10), colour) for colour in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    pixels = assert_rgb(load_image(data), (20, 10))
    assert tuple(pixels[5, 10]) == colours[0]


# ---------------------------------------------------------------- modes


def _i16_gradient() -> Image.Image:
    return Image.fromarray(np.arange(0, 60000, 1000, dtype=np.uint16).reshape(6, 10))


def _int32_gradient() -> Image.Image:
    return Image.fromarray(np.arange(-30, 30, dtype=np.int32).reshape(6, 10) * 100_000)


def _float_gradient() -> Image.Image:
    return Image.fromarray(np.linspace(-3.0, 7.0, 60, dtype=np.float32).reshape(6, 10))


def test_sixteen_bit_int_and_float_modes_are_rescaled_to_full_range():
    for image, mode in ((_i16_gradient(), "I;16"), (_int32_gradient(), "I"), (_float_gradient(), "F")):
        assert image.mode == mode
        pixels = assert_rgb(load_image(image), (10, 6)).astype(int)
        assert pixels.min() == 0 and pixels.max() == 255, mode
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        flat = pixels[..., 0].ravel()
        assert (np.diff(flat) >= 0).all(), f"{mode}: order of intensities not kept"


def test_constant_high_bit_depth_image_does_not_divide_by_zero():
    flat = Image.fromarray(np.full((4, 4), 1234, dtype=np.uint16))
    assert_rgb(load_image(flat), (4, 4))


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((3, 1), (0, 0, 255, 0))  # fully transparent blue
    pixels = assert_rgb(load_image(rgba), (4, 2))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[1, 3]) == (255, 255, 255)

    la = Image.new("LA", (3, 3), (0, 255))
    la.putpixel((1, 1), (0, 0))
    pixels = assert_rgb(load_image(la), (3, 3))
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[1, 1]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 200, 10, 10] + [0] * (254 * 3))
    palette_image.putpixel((0, 0), 1)
    palette_image.info["transparency"] = 0  # index 0 (black) is transparent
    for source in (palette_image, encode(palette_image, "PNG"), encode(palette_image, "GIF")):
        pixels = assert_rgb(load_image(source), (4, 4))
        assert tuple(pixels[0, 0]) == (200, 10, 10)
        assert tuple(pixels[2, 2]) == (255, 255, 255), "transparent index must become white, not black"


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("P", 0, (0, 0, 0)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
    ],
)
def test_plain_modes_convert_to_rgb(mode, colour, expected):
    image = Image.new(mode, (5, 3), colour)
    pixels = assert_rgb(load_image(image), (5, 3))
    assert tuple(pixels[1, 2]) == expected


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda: Image.new("1", (6, 4), 1), "PNG"),
        (lambda: Image.new("L", (6, 4), 77), "PNG"),
        (lambda: Image.new("LA", (6, 4), (10, 255)), "PNG"),
        (lambda: Image.new("RGBA", (6, 4), (1, 2, 3, 255)), "PNG"),
        (_i16_gradient, "PNG"),
    ],
)
def test_every_mode_from_encoded_bytes_is_rgb(make, fmt):
    image = make()
    loaded = load_image(encode(image, fmt))
    assert_rgb(loaded, image.size)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(load_image(image)))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(("make", "fmt"), [
    (lambda: Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "TIFF"), (_int32_gradient, "TIFF"),
    (_float_gradient, "TIFF"), (lambda: Image.new("RGB", (6, 4)), "BMP"), (lambda: Image.new("RGB", (16, 16)), "ICO"),
])
def test_formats_outside_the_allow_list_are_refused(make, fmt):
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(encode(make(), fmt))


def test_corrupt_bytes_are_refused():
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(b"\x00\x01garbage that is not any image format\xff" * 4)
    data = bytearray(encode(noise_image()))
    for i in range(100, 300):
        data[i] ^= 0x5A  # scramble the compressed pixel data
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(bytes(data))


def test_truncated_png_is_refused(tmp_path):
    data = encode(noise_image(128, 128))
    half = data[: len(data) // 2]
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(half)
    path = tmp_path / "half.png"
    path.write_bytes(half)
    with pytest.raises(ImageError, match=r"half\.png: corrupt or truncated"):
        load_image(path)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_truncated_png_passed_as_lazy_pil_image_is_refused(mode):
    # Image.open() is lazy; a truncated file must fail inside load_image with ImageError,
    # not be handed back undecoded (RGB) or escape as a bare OSError (other modes).
    data = encode(noise_image(128, 128).convert(mode))
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(lazy)


def test_empty_input_is_refused(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: file is empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(bytearray())


def test_text_file_is_refused(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is a text file, not a picture\n" * 20)
    with pytest.raises(ImageError, match=r"notes\.png: not a recognised image format"):
        load_image(text)


def test_missing_path_and_directory_are_refused(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png: no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="no such image file"):
        load_image(str(tmp_path))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> bytes:
    data = encode(Image.new("1", (10000, 10000)))  # 100 megapixels, a few kB on disk
    assert len(data) < 1_000_000
    return data


def test_hundred_megapixel_png_is_refused_before_decoding(huge_png, tmp_path, monkeypatch):
    assert 10000 * 10000 > DEFAULT_MAX_INPUT_PIXELS
    decoded = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png)
    for source in (huge_png, path):
        with pytest.raises(ImageError, match="too large|over the limit") as info:
            load_image(source)
        assert "megapixel" in str(info.value) or "100000000" in str(info.value)
    assert decoded == [], "the oversized image was decoded before being refused"


def test_image_over_default_limit_but_under_pil_bomb_limit_is_refused(monkeypatch):
    # 60 MP: over our 50 MP default, under PIL's own warning threshold (~89 MP)
    assert 8000 * 7500 < Image.MAX_IMAGE_PIXELS
    data = encode(Image.new("1", (8000, 7500)))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ImageError, match=r"8000x7500 = 60\.0 megapixels is over the limit of 50\.0"):
        load_image(data)
    assert decoded == []


def test_custom_pixel_limit():
    data = encode(noise_image(20, 20))
    assert load_image(data, max_input_pixels=400).size == (20, 20)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(data, max_input_pixels=399)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(noise_image(20, 20), max_input_pixels=399)


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _loads_or_refuses(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImageError as error:
        assert str(error)
        return
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1
    assert image.width * image.height <= DEFAULT_MAX_INPUT_PIXELS


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_load_or_raise_image_error(data):
    _loads_or_refuses(data)


@FUZZ
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0"]),
    st.binary(max_size=2048),
)
def test_random_bytes_after_an_image_signature_load_or_raise_image_error(signature, data):
    _loads_or_refuses(signature + data)


@FUZZ
@given(st.integers(0, 4000), st.integers(0, 255), st.data())
def test_mutated_png_loads_or_raises_image_error(position, value, data):
    original = encode(noise_image(24, 16, seed=1))
    assume(position < len(original))
    mutated = bytearray(original)
    mutated[position] = value
    cut = data.draw(st.integers(1, len(mutated)))
    _loads_or_refuses(bytes(mutated[:cut]))


# ---------------------------------------------------------------- grid


def _aspect_ok(width: int, height: int) -> bool:
    return max(width, height) / min(width, height) <= 200


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_snap_is_on_the_grid_and_within_bounds(width, height):
    assume(_aspect_ok(width, height))
    grid = PixelGrid()
    w, h = grid.snap(width, height)
    assert w % grid.factor == 0 and h % grid.factor == 0
    assert w >= grid.factor and h >= grid.factor
    assert grid.min_pixels <= w * h <= grid.max_pixels
    assert grid.tokens(w, h) == (w // 28) * (h // 28)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_snap_on_the_small_grid_is_within_bounds(width, height):
    # a 16-token budget can only hold aspect ratios up to 4:1 on a 28 px grid
    assume(max(width, height) / min(width, height) <= 4)
    w, h = SMALL_GRID.snap(width, height)
    assert w % 28 == 0 and h % 28 == 0
    assert SMALL_GRID.min_pixels <= w * h <= SMALL_GRID.max_pixels


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_snap_keeps_orientation(width, height):
    assume(_aspect_ok(width, height))
    w, h = PixelGrid().snap(width, height)
    if width > 2 * height:
        assert w > h
    if height > 2 * width:
        assert h > w


def test_snap_keeps_sizes_already_on_the_grid():
    grid = PixelGrid()
    for size in ((112, 112), (56, 56), (28 * 40, 28 * 20), (28 * 32, 28 * 40)):
        assert grid.snap(*size) == size
    assert SMALL_GRID.snap(112, 112) == (112, 112)


def test_tiny_images_are_upscaled_to_the_minimum():
    grid = PixelGrid()
    for width, height in ((1, 1), (5, 5), (10, 20), (27, 27), (40, 40)):
        w, h = grid.snap(width, height)
        assert w * h >= grid.min_pixels
        assert w >= width and h >= height
    assert grid.snap(1, 1) == (56, 56)
    assert grid.snap(10, 10) == (56, 56)
    image = high_view(Image.new("RGB", (5, 5), (9, 9, 9)), grid)
    assert image.size == (56, 56)  # the processor's own minimum; the low view cannot be smaller
    assert make_views(image, grid).low.size == (56, 56)


def test_huge_images_are_downscaled_to_the_maximum():
    grid = PixelGrid()
    w, h = grid.snap(4000, 3000)
    assert w * h <= grid.max_pixels
    assert w * h > 0.8 * grid.max_pixels  # not shrunk more than needed
    assert abs(w / h - 4 / 3) < 0.1


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-1, 5), (201, 1), (1, 201), (10000, 40)])
def test_snap_refuses_empty_and_extreme_sizes(size):
    with pytest.raises(ImageError):
        PixelGrid().snap(*size)


def test_load_then_snap_refuses_extreme_aspect_ratio():
    with pytest.raises(ImageError, match="aspect ratio"):
        make_views(load_image(Image.new("RGB", (2010, 10))), PixelGrid())


# ---------------------------------------------------------------- views


def test_views_of_a_112_image_on_the_small_grid():
    image = noise_image(112, 112)
    views = make_views(image, SMALL_GRID)
    assert views.high.size == (112, 112)
    assert views.low.size == (56, 56)
    assert views.low.mode == views.high.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(views.high), np.asarray(image))
    high_tokens = SMALL_GRID.tokens(*views.high.size)
    low_tokens = SMALL_GRID.tokens(*views.low.size)
    assert high_tokens == 16
    assert low_tokens <= 0.27 * high_tokens


def test_low_view_is_a_downscale_of_the_high_view():
    array = np.zeros((112, 112, 3), dtype=np.uint8)
    array[:, 56:] = 255  # right half white
    views = make_views(Image.fromarray(array), SMALL_GRID)
    low = np.asarray(views.low).astype(int)
    assert low[:, :20].max() < 10
    assert low[:, 36:].min() > 245


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700))
def test_low_view_is_half_the_high_view_on_the_grid(width, height):
    assume(_aspect_ok(width, height))
    grid = PixelGrid()
    views = make_views(Image.new("RGB", (width, height), (30, 60, 90)), grid)
    assert views.high.size == grid.high_size(width, height) == grid.snap(width, height)  # the processor's size
    assert views.low.size == grid.snap(views.high.width // 2, views.high.height // 2)
    assert views.low.size == low_view(views.high, grid).size == grid.low_size(width, height)
    for view in (views.low, views.high):
        assert view.width % 28 == 0 and view.height % 28 == 0
    columns, rows = views.high.width // 28, views.high.height // 28
    if columns % 2 == 0 and rows % 2 == 0 and grid.tokens(*views.high.size) >= 16:
        assert views.low.size == (views.high.width // 2, views.high.height // 2)  # exactly half: a quarter
        assert 4 * grid.tokens(*views.low.size) == grid.tokens(*views.high.size)


@pytest.mark.parametrize("grid", [PixelGrid(), PixelGrid(28, 3136, 12845056)])  # the default and Qwen2.5-VL's
@pytest.mark.parametrize("size", [(1000, 700), (700, 1000), (4000, 50), (50, 4000), (1280, 960)])
@pytest.mark.parametrize("halve_original", [False, True])
def test_low_view_costs_a_quarter_of_the_tokens_at_every_aspect(grid, size, halve_original):
    if halve_original and size[0] * size[1] > grid.max_pixels:
        pytest.skip("the release halves the original, not the full view: over the budget, they are not in ratio")
    views = make_views(Image.new("RGB", size), grid, halve_original=halve_original)
    ratio = grid.tokens(*views.low.size) / grid.tokens(*views.high.size)
    assert 0.22 <= ratio <= 0.28, (size, views.low.size, views.high.size)
    assert views.high.width * views.high.height <= grid.max_pixels
    if size[0] > 2 * size[1]:
        assert views.high.width > views.high.height  # orientation kept


@pytest.mark.parametrize("size", [(1000, 700), (700, 1000), (4000, 50), (50, 4000), (1280, 960)])
def test_views_of_large_images_on_the_tiny_models_budget(size):
    """24 tokens at most: the processor's full view may be an odd number of cells a side (140x112, 5x4), whose half
    snaps down to 2x2 (a fifth); the release's halved original is still over the budget, so both views are capped."""
    grid = PixelGrid(28, 28 * 28, 168 * 112)
    views = make_views(Image.new("RGB", size), grid)
    assert 0.2 <= grid.tokens(*views.low.size) / grid.tokens(*views.high.size) <= 0.28
    release = make_views(Image.new("RGB", size), grid, halve_original=True)
    assert release.high.size == views.high.size == grid.snap(*size)
    assert release.low.size == grid.snap(size[0] // 2, size[1] // 2) == release.high.size


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_snap_never_exceeds_max_pixels_even_at_extreme_aspect(width, height):
    assume(_aspect_ok(width, height))
    for grid in (SMALL_GRID, PixelGrid(28, 28 * 28, 168 * 112)):
        w, h = grid.snap(width, height)
        assert w * h <= grid.max_pixels and w % 28 == 0 and h % 28 == 0
        w, h = grid.high_size(width, height)
        assert w * h <= grid.max_pixels and w % 28 == 0 and h % 28 == 0


def test_snap_of_4000x50_fits_the_budget():
    assert SMALL_GRID.snap(4000, 50) == (448, 28)  # was 980x28 = 27,440 px over a 12,544 budget


def test_jpeg_decodes_only_as_large_as_the_grid_needs():
    """With a grid, a big JPEG decodes at a reduced scale that still covers the high view; views barely move."""


    grid = PixelGrid(28, 28 * 28, 168 * 112)
    gradient = np.linspace(0, 255, 1792, dtype=np.float32)[None, :, None] * np.ones((1344, 1, 3), np.float32)
    buffer = io.BytesIO()
    Image.fromarray(gradient.astype("uint8")).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    full, drafted = load_image(data), load_image(data, grid=grid)
    assert full.size == (1792, 1344)
    high = grid.high_size(1792, 1344)
    assert drafted.width < full.width and drafted.width >= high[0] and drafted.height >= high[1]
    plain, fast = make_views(full, grid), make_views(drafted, grid)
    assert fast.high.size == plain.high.size and fast.low.size == plain.low.size
    difference = np.abs(np.asarray(fast.high, np.float32) - np.asarray(plain.high, np.float32))
    assert difference.mean() < 2.0
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient.astype("uint8")).save(rotated, format="JPEG", exif=exif)
    assert load_image(rotated.getvalue(), grid=grid).size == (1344, 1792)  # no draft when EXIF turns it


def test_the_low_view_is_made_only_when_read(monkeypatch, random_tiny):
    """`full` mode never makes the low view (a LANCZOS halving of the high view); the other modes make it once."""
    from visionthink import images
    from visionthink.data import synth
    from visionthink.engines.transformers_engine import Request, TransformersEngine

    made = []
    halve = images.low_view
    monkeypatch.setattr(images, "low_view", lambda high, grid: made.append(high.size) or halve(high, grid))
    items = synth.split_items("test", 3, seed=5)
    views = images.make_views(items[0].image, PixelGrid())
    assert made == []
    assert views.low.tobytes() == halve(views.high, PixelGrid()).tobytes() and views.low is views.low
    assert len(made) == 1
    engine = TransformersEngine(*random_tiny, batch_size=3)
    requests = [Request(item.image, item.question) for item in items]
    made.clear()
    engine.run(requests, "full")
    assert made == []
    engine.run(requests, "low")
    assert len(made) == 3
