"""Safe image loading, snapping to the model's pixel grid, and the low/high-resolution views."""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from visionthink.errors import ImageError

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image

DEFAULT_MAX_INPUT_PIXELS = 50_000_000
"""Images with more pixels than this are refused before decoding (decompression bombs)."""

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
"""The formats decoded. Others (ICO, ICNS, EPS, TIFF, ...) are refused before Pillow parses them: some decode in
full when opened, some run external programs, and their parsers were never bounded here."""
MAX_JPEG_SCANS = 32
"""Scans of one JPEG (libjpeg passes over every coefficient per scan, ~30 ms at 16 MP; a progressive JPEG has ten)."""
MAX_JPEG_SEGMENTS = 1000
"""Marker segments before a JPEG's first scan (Pillow parses each in Python; a camera JPEG has about twenty)."""
MAX_JPEG_PADDING = 65536
"""Fill and junk bytes between those segments (Pillow steps through them one at a time in Python)."""
MAX_JPEG_TABLE_BYTES = 65536
"""Bytes of quantization tables and frame headers (Pillow reads them table by table and component by component in
Python; a JPEG has about 600)."""
MAX_PNG_CHUNKS = 20000
"""Chunks of one PNG (Pillow reads each in Python; encoders cut image data into 8-64 KB chunks)."""
MAX_GIF_BLOCKS = 10000
"""Extension sub-blocks and stray bytes before a GIF's first image (Pillow reads each in Python)."""

_FILL = re.compile(rb"\xff+")

RELEASE_MIN_PIXELS = 512 * 512
"""The authors' release scales smaller training images up to this many pixels (`clamp_to_pixel_range`)."""
RELEASE_MAX_PIXELS = 2048 * 2048
"""The authors' release scales larger training images down to this many pixels (`clamp_to_pixel_range`)."""


def clamp_to_pixel_range(image: Image.Image, min_pixels: int = RELEASE_MIN_PIXELS,
                         max_pixels: int = RELEASE_MAX_PIXELS) -> Image.Image:
    """The image scaled, aspect kept, into about [min_pixels, max_pixels] as the release's dataset does
    (`verl/utils/dataset/multimodal_dataset.py`, `process_image`): over `max_pixels`, both sides times
    sqrt(max_pixels / area), truncated to ints; then under `min_pixels`, the same towards `min_pixels`; LANCZOS.
    Truncation can leave the area a little under `min_pixels`, as in the release. An image in range is returned
    as it is."""
    for bound, outside in ((max_pixels, lambda area: area > max_pixels), (min_pixels, lambda area: area < min_pixels)):
        area = image.width * image.height
        if outside(area):
            scale = math.sqrt(bound / area)
            size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
    return image


NATIVE_RESAMPLE = Image.Resampling.BICUBIC
"""The resampling filter of Qwen2-VL's image processor: a view resized with it to the processor's size is the
processor's own resize, pixel for pixel (`tests/test_release_views.py`)."""
RELEASE_MIN_SIDE = 28
"""The release's evaluation enlarges a view with a side under this many pixels (aspect kept) before the processor."""


@dataclass(frozen=True)
class PixelGrid:
    """The model's pixel grid: sizes are multiples of `factor` with area in [min_pixels, max_pixels].

    For Qwen2.5-VL one visual token covers 28x28 pixels (14 px patches merged 2x2). `snap` is the processor's
    smart resize (Qwen2VLImageProcessor's `smart_resize`).
    """

    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280

    def snap(self, width: int, height: int, factor: int | None = None,
             min_pixels: int | None = None) -> tuple[int, int]:
        """Nearest (width, height) on the grid (`factor`, default the grid's), aspect kept as far as the
        grid allows, area within [min_pixels, max_pixels]: Qwen2-VL's `smart_resize`, step for step. Never over
        max_pixels: where `smart_resize` itself would be (a budget of fewer tokens than the aspect ratio, so one side
        stays one cell), the long side is shortened until it fits, so the processor keeps the size as it is."""
        if width < 1 or height < 1:
            raise ImageError(f"image size {width}x{height} is empty")
        if max(width, height) / min(width, height) > 200:
            raise ImageError(f"image aspect ratio {width}x{height} is too extreme (over 200:1)")
        f = factor or self.factor
        low = self.min_pixels if min_pixels is None else min_pixels
        w = round(width / f) * f
        h = round(height / f) * f
        if w * h > self.max_pixels:
            beta = math.sqrt(width * height / self.max_pixels)
            w = max(f, math.floor(width / beta / f) * f)
            h = max(f, math.floor(height / beta / f) * f)
        elif w * h < low:
            beta = math.sqrt(low / (width * height))
            w = math.ceil(width * beta / f) * f
            h = math.ceil(height * beta / f) * f
        while w * h > self.max_pixels and max(w, h) > f:  # a side clamped to one cell: shorten the other
            if w >= h:
                w -= f
            else:
                h -= f
        if max(w, h) / min(w, h) > 200:  # the processor refuses such a view (e.g. 29x5615 comes to 28x5628)
            raise ImageError(f"image {width}x{height} comes to {w}x{h} on the {f} px grid, over the processor's "
                             "200:1 aspect limit")
        return w, h

    def high_size(self, width: int, height: int) -> tuple[int, int]:
        """The full-resolution view's size for an image of (width, height): the processor's own (`snap`)."""
        return self.snap(width, height)

    def low_size(self, width: int, height: int, halve_original: bool = False) -> tuple[int, int]:
        """The low-resolution view's size for an image of (width, height): half the high view's sides, snapped;
        with `halve_original` (the release), the image's sides halved as the release does, snapped."""
        if halve_original:
            return self.snap(*release_half_size(width, height))
        high = self.high_size(width, height)
        return self.snap(max(1, high[0] // 2), max(1, high[1] // 2))

    def tokens(self, width: int, height: int) -> int:
        """Visual tokens for an image already on the grid."""
        return (width // self.factor) * (height // self.factor)


def load_image(source: ImageSource, max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
               grid: PixelGrid | None = None) -> Image.Image:
    """Load an RGB image from a path, bytes or PIL image.

    Applies EXIF orientation, takes the first frame of animations, converts any mode to RGB
    (transparency is composited on white) and refuses corrupt, truncated, non-image or
    oversized input with `ImageError`. With a `grid`, a JPEG decodes at the smallest of its
    built-in scales (1/2, 1/4, 1/8) that still covers the grid's high view.
    """
    if isinstance(source, Image.Image):
        _check_size(source, max_input_pixels, "image")
        return _guarded("image", lambda: _loaded_rgb(source))
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image data is empty (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), "image data", max_input_pixels, grid)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: file is empty (0 bytes)")
        with open(path, "rb") as handle:
            return _decode(io.BytesIO(handle.read()), str(path), max_input_pixels, grid)
    raise ImageError(f"cannot load an image from a {type(source).__name__}")


def check_encoded(data: bytes, name: str = "image data") -> int:
    """Refuse, with `ImageError` and before Pillow parses it, an image that is not PNG, JPEG, WebP or GIF, or whose
    structure would make decoding slow: too many JPEG scans, segments or fill bytes, PNG chunks or GIF blocks.
    Costs a few C-speed scans of the bytes and at most a few thousand Python steps. Returns the steps Pillow will
    take in Python for this structure (segments, fill bytes, chunks, blocks)."""
    data = bytes(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _check_jpeg(data, name)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _check_png(data, name)
    if data.startswith((b"GIF87a", b"GIF89a")):
        return _check_gif(data, name)
    if not (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        raise ImageError(f"{name}: not a recognised image format (PNG, JPEG, WebP and GIF are accepted)")
    return 0


def _check_jpeg(data: bytes, name: str) -> int:
    position, segments, padding, tables = 2, 0, 0, 0
    while position < len(data):
        marker = data.find(b"\xff", position)
        if marker < 0:
            return segments + padding + tables // 64
        padding += marker - position
        end = _FILL.match(data, marker).end()
        padding += end - marker - 1
        if padding > MAX_JPEG_PADDING:
            raise ImageError(f"{name}: JPEG holds over {MAX_JPEG_PADDING} fill or junk bytes between its segments")
        if end >= len(data):
            return segments + padding + tables // 64
        kind = data[end]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(f"{name}: JPEG has over {MAX_JPEG_SEGMENTS} segments before its image data")
        if kind == 0xDA:
            break
        if kind == 0x00 or kind == 0x01 or 0xD0 <= kind <= 0xD9:
            position = end + 1
        elif end + 3 <= len(data):
            length = int.from_bytes(data[end + 1:end + 3], "big")
            position = end + 1 + length
            if kind == 0xDB or (0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC)):
                tables += length
                if tables > MAX_JPEG_TABLE_BYTES:
                    raise ImageError(f"{name}: JPEG holds over {MAX_JPEG_TABLE_BYTES} bytes of quantization tables "
                                     "and frame headers")
        else:
            return segments + padding + tables // 64
    scans = data.count(b"\xff\xda", position)
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"{name}: JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS}")
    return segments + padding + tables // 64


def _check_png(data: bytes, name: str) -> int:
    position, chunks = 8, 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"{name}: PNG has over {MAX_PNG_CHUNKS} chunks")
        if data[position + 4:position + 8] == b"IEND":
            break
        position += 12 + int.from_bytes(data[position:position + 4], "big")
    return chunks


def _check_gif(data: bytes, name: str) -> int:
    flags = data[10] if len(data) > 10 else 0
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while position < len(data) and data[position] not in b",;":
        blocks += 1
        if data[position] == 0x21:  # an extension: label, then sub-blocks up to an empty one
            position += 2
            while position < len(data) and data[position]:
                blocks += 1
                if blocks > MAX_GIF_BLOCKS:
                    break
                position += 1 + data[position]
            position += 1
        else:
            position += 1
        if blocks > MAX_GIF_BLOCKS:
            raise ImageError(f"{name}: GIF has over {MAX_GIF_BLOCKS} blocks before its first image")
    return blocks


def _open(stream: io.BytesIO, name: str) -> Image.Image:
    """`Image.open` on the allowed formats, after `check_encoded`."""
    check_encoded(stream.getvalue(), name)
    return Image.open(stream, formats=ALLOWED_FORMATS)


def _decode(stream: io.BytesIO, name: str, max_input_pixels: int, grid: PixelGrid | None = None) -> Image.Image:
    def decode() -> Image.Image:
        image = _open(stream, name)
        _check_size(image, max_input_pixels, name)
        image.seek(0)
        if grid is not None and image.format == "JPEG" and not _exif_swaps_axes(image):
            image.draft("RGB", grid.high_size(*image.size))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb(image)

    return _guarded(name, decode)


def _exif_swaps_axes(image: Image.Image) -> bool:
    """Whether EXIF orientation turns the image by 90 degrees (its high view is then of the other shape)."""
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - a broken EXIF block just means no shortcut
        return True


def _loaded_rgb(image: Image.Image) -> Image.Image:
    image.load()  # a lazily opened image decodes here, so that its errors are caught here
    return _to_rgb(image)


def _guarded(name: str, work: Callable[[], Image.Image]) -> Image.Image:
    """Run `work`, turning everything a broken image can raise into `ImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return work()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{name}: image is too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, ZeroDivisionError,
            struct.error, MemoryError, RuntimeError, AttributeError) as error:
        raise ImageError(f"{name}: corrupt or truncated image ({type(error).__name__}: {error})") from None


def _check_size(image: Image.Image, max_input_pixels: int, name: str) -> Image.Image:
    width, height = image.size
    if width * height > max_input_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height / 1e6:.1f} megapixels is over the limit of "
            f"{max_input_pixels / 1e6:.1f} megapixels"
        )
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; alpha is composited on white, 16/32-bit and float are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array - low) * scale).clip(0, 255).astype("uint8")
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


class Views:
    """The two resolutions of one image, both on the model's pixel grid. Given a `grid` instead of a `low`
    view, the low view is made when first read (`full` mode never reads it): from the high view, or with
    `original`, from that image as the release makes it (`release_low_view`)."""

    def __init__(self, low: Image.Image | None = None, high: Image.Image | None = None,
                 grid: PixelGrid | None = None, original: Image.Image | None = None):
        if high is None or (low is None and grid is None):
            raise TypeError("Views needs the high view and either the low view or the grid to make it")
        self.high = high
        self._low = low
        self._grid = grid
        self._original = original

    @property
    def low(self) -> Image.Image:
        if self._low is None:
            if self._original is not None:
                self._low = release_low_view(self._original, self._grid)
                self._original = None
            else:
                self._low = low_view(self.high, self._grid)
        return self._low


def high_view(image: Image.Image, grid: PixelGrid) -> Image.Image:
    """The full-resolution view: the processor's own resize of the image (`grid.high_size`, `NATIVE_RESAMPLE`),
    pixel for pixel; an image already of that size is returned as it is."""
    size = grid.high_size(*image.size)
    return image if image.size == size else image.resize(size, NATIVE_RESAMPLE)


def low_view(high: Image.Image, grid: PixelGrid) -> Image.Image:
    """The low-resolution view: half width and half height of the high view (LANCZOS), on the grid.

    Where the high view's sides are even numbers of cells the halves are exact (a quarter of the tokens);
    otherwise the halves are snapped."""
    half = (max(1, high.width // 2), max(1, high.height // 2))
    size = grid.snap(*half)
    return high.resize(size, Image.Resampling.LANCZOS)


def release_min_side_size(width: int, height: int) -> tuple[int, int]:
    """The size the release's evaluation gives a view before the processor: as it is, or, with a side under
    `RELEASE_MIN_SIDE`, both sides times the factor that brings the shorter one to it, truncated."""
    if width >= RELEASE_MIN_SIDE and height >= RELEASE_MIN_SIDE:
        return width, height
    scale = max(RELEASE_MIN_SIDE / width, RELEASE_MIN_SIDE / height)
    return int(width * scale), int(height * scale)


def release_half_size(width: int, height: int) -> tuple[int, int]:
    """The release's low view of a (width, height) image before the processor: each side halved, rounded down
    (`scripts/vllm_tool.py`, `downsample_image`), then `release_min_side_size`."""
    return release_min_side_size(max(1, width // 2), max(1, height // 2))


def release_low_view(image: Image.Image, grid: PixelGrid) -> Image.Image:
    """The release's low view: the image resized (LANCZOS) to `release_half_size`, then the processor's resize
    (`high_view`)."""
    half = image.resize(release_half_size(*image.size), Image.Resampling.LANCZOS)
    return high_view(half, grid)


def make_views(image: Image.Image, grid: PixelGrid, halve_original: bool = False) -> Views:
    """Both views of an RGB image (the low one made when first read). The high view is the processor's view of
    the image (`high_view`). The low view is half of the high view, snapped (`low_view`), or with `halve_original`
    (the release), the image halved and then the processor's view of that (`release_low_view`); the release also
    enlarges an image with a side under 28 px first (`release_min_side_size`)."""
    if not halve_original:
        return Views(high=high_view(image, grid), grid=grid)
    size = release_min_side_size(*image.size)
    shown = image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
    return Views(high=high_view(shown, grid), grid=grid, original=image)


ZOOM_MIN_CELLS = 2
"""A zoom's crop is at least this many visual tokens wide and high (2x2 = 4 tokens)."""
ZOOM_MAX_FRACTION = 0.25
"""The zoom budget: a crop holds at most this share of the full view's visual tokens (at least 2x2), so a zoom
always costs less than a resize and cannot stand in for one."""


def zoom_budget_cells(columns: int, rows: int, min_cells: int = ZOOM_MIN_CELLS) -> int:
    """The most cells of a `columns` x `rows` full-view lattice that one zoom crop may hold."""
    return max(min_cells * min_cells, int(columns * rows * ZOOM_MAX_FRACTION))


def zoom_region(box: tuple[float, float, float, float], views: Views, grid: PixelGrid,
                min_cells: int = ZOOM_MIN_CELLS) -> tuple[int, int, int, int]:
    """The region of the high view that a zoom on `box` (x1, y1, x2, y2 in the low view's pixels) returns.

    The box is scaled to the high view (x2 for `make_views`' views) and clamped to it. The region is made of
    whole cells of the high view's own token lattice (`grid.factor` px from its top-left corner): the cells the
    box touches, grown around the box's centre to at least `min_cells` cells a side and `grid.min_pixels` in
    area, and kept inside the view. On the lattice, every visual token of the crop holds exactly the pixels of a
    token of the full view, so what the model reads in the full view it reads in the crop. The crop is never
    resampled or stretched; its visual tokens are `grid.tokens(width, height)`. The box must overlap the low view
    (`tools.zoom.check_box` checks that first)."""
    high, low = views.high, views.low
    f = grid.factor
    sx, sy = high.width / low.width, high.height / low.height
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = max(0.0, x1) * sx, min(float(low.width), x2) * sx
    y1, y2 = max(0.0, y1) * sy, min(float(low.height), y2) * sy
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"zoom box {box} does not overlap the {low.width}x{low.height} low view")
    columns, rows = high.width // f, high.height // f
    first_x, first_y = math.floor(x1 / f), math.floor(y1 / f)
    wide = min(columns, max(min_cells, math.ceil(x2 / f) - first_x))
    tall = min(rows, max(min_cells, math.ceil(y2 / f) - first_y))
    budget = zoom_budget_cells(columns, rows, min_cells)
    while wide * tall > budget and max(wide, tall) > min_cells:
        if wide >= tall:
            wide -= 1
        else:
            tall -= 1
    while wide * tall * f * f < grid.min_pixels and (wide < columns or tall < rows):
        if (wide <= tall and wide < columns) or tall >= rows:
            wide += 1
        else:
            tall += 1
    left = _first_cell((x1 + x2) / 2 / f, wide, first_x, math.ceil(x2 / f), columns)
    top = _first_cell((y1 + y2) / 2 / f, tall, first_y, math.ceil(y2 / f), rows)
    return left * f, top * f, (left + wide) * f, (top + tall) * f


def _first_cell(centre: float, cells: int, first: int, end: int, total: int) -> int:
    """The first of `cells` lattice cells centred on `centre`, covering cells first..end-1 if they fit, in 0..total."""
    start = math.floor(centre - cells / 2 + 0.5)
    if cells >= end - first:
        start = min(max(start, end - cells), first)  # cover every touched cell
    return min(max(0, start), total - cells)


def zoom_crop(box: tuple[float, float, float, float], views: Views, grid: PixelGrid,
              min_cells: int = ZOOM_MIN_CELLS) -> Image.Image:
    """The image a zoom on `box` returns: `zoom_region` of the high view, pixel for pixel."""
    return views.high.crop(zoom_region(box, views, grid, min_cells))


def load_image_within(data: bytes, max_pixels: int, factor: int = 56,
                      max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """`load_image` of encoded bytes for servers: an image over `max_pixels` is shrunk while it is decoded.

    JPEGs decode at a reduced scale (`draft`), other formats are brought to a cheap mode first
    ("1" to "L") and reduced by whole factors before the LANCZOS resize, so no full-size RGB copy
    is made or kept. A shrunk image lands on `factor` multiples within `max_pixels` (the high
    view's grid: `PixelGrid.high_size` leaves it as it is); smaller images are as `load_image`
    returns them.
    """
    if not data:
        raise ImageError("image data is empty (0 bytes)")

    def decode() -> Image.Image:
        image = _open(io.BytesIO(bytes(data)), "image data")
        _check_size(image, max_input_pixels, "image data")
        image.seek(0)
        if image.width * image.height > max_pixels and image.format == "JPEG":
            beta = math.sqrt(image.width * image.height / max_pixels)
            image.draft("RGB", (int(image.width / beta), int(image.height / beta)))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        if image.width * image.height > max_pixels:
            if max(image.size) / min(image.size) > 200:  # shrinking would hide it from `PixelGrid.snap`
                raise ImageError(f"image aspect ratio {image.width}x{image.height} is too extreme (over 200:1)")
            image = _shrink(image, max_pixels, factor)
        return _to_rgb(image)

    return _guarded("image data", decode)


def _shrink(image: Image.Image, max_pixels: int, factor: int) -> Image.Image:
    beta = math.sqrt(image.width * image.height / max_pixels)
    width = max(factor, math.floor(image.width / beta / factor) * factor)
    height = max(factor, math.floor(image.height / beta / factor) * factor)
    while width * height > max_pixels and max(width, height) > factor:
        if width >= height:
            width -= factor
        else:
            height -= factor
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = _to_rgb(image)
    return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
