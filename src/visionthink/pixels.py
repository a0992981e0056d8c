"""Images to Qwen2-VL patches, bit for bit as the upstream PIL image processor makes them, in less time.

`Qwen2VLImageProcessorPil` rescales and normalizes a float copy of the whole image, then copies it into
patches. Here the patches are cut from the 8-bit pixels, and each of the 256 levels of each channel is
mapped once, by a table computed with the processor's own arithmetic (float64 rescale, float32
normalize), so the values are identical. Images that are not RGB or that the processor would resize, and
processors configured otherwise, take the upstream path (`patches` returns None).
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import torch
from PIL import Image


def patches(image_processor, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(pixel_values, image_grid_thw) of `images` as `image_processor(images, return_tensors="pt")` gives them,
    or None where this shortcut does not apply."""
    table = _level_table(image_processor)
    if table is None or not images:
        return None
    if any(image.mode != "RGB" or not _on_grid(image_processor, image) for image in images):
        return None  # the processor converts other modes its own way (alpha over white)
    p, m, t = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    channels = 3  # RGB, checked above
    grids = [[1, image.height // p, image.width // p] for image in images]
    # one tensor for every image, written in place: a fresh allocation per copy costs its page faults again
    out = torch.empty(sum(h * w for _, h, w in grids), channels * t * p * p)
    start = 0
    for image, (_, gh, gw) in zip(images, grids, strict=True):
        pixels = torch.from_numpy(np.array(image))  # height, width, channel (uint8)
        # the processor's patch order: merge blocks, then the 2x2 patches in a block, then channel, row, column
        cut = pixels.reshape(gh // m, m, p, gw // m, m, p, channels).permute(0, 3, 1, 4, 6, 2, 5)
        cut = cut.reshape(gh * gw, channels, p * p)
        values = out[start : start + gh * gw].view(gh * gw, channels, t, p * p)
        for channel in range(channels):
            values[:, channel, 0] = table[channel][cut[:, channel].long()]
        values[:, :, 1:] = values[:, :, :1]  # one still image fills every temporal slot
        start += gh * gw
    return out, torch.tensor(grids, dtype=torch.long)


def per_image(pixel_values: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
    """`pixel_values` of several images cut into one view per image (`grids`: their `image_grid_thw` rows)."""
    return list(pixel_values.split([int(grid.prod()) for grid in grids]))


def join(parts: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat(parts)` of row-major 2-D tensors, as a view without copying where they already lie end to end in
    one storage (the images of one `patches` call, in order): at document sizes a copy is a few hundred MB."""
    first = parts[0]
    if len(parts) == 1:
        return first
    end = first.storage_offset()
    for part in parts:
        if (part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or not part.is_contiguous()
                or part.storage_offset() != end or part.shape[1:] != first.shape[1:] or part.dtype != first.dtype):
            return torch.cat(parts)
        end += part.numel()
    return first.as_strided((sum(len(part) for part in parts), *first.shape[1:]), first.stride())


def _level_table(image_processor) -> torch.Tensor | None:
    """(3, 256): the normalized value of each 8-bit level per channel, or None for an unfamiliar processor."""
    if type(image_processor).__name__ != "Qwen2VLImageProcessorPil":  # the torchvision one fuses its arithmetic
        return None
    if not (image_processor.do_rescale and image_processor.do_normalize):
        return None
    return _table(tuple(image_processor.image_mean), tuple(image_processor.image_std), image_processor.rescale_factor)


@functools.lru_cache(maxsize=8)
def _table(image_mean: tuple[float, ...], image_std: tuple[float, ...], rescale_factor: float) -> torch.Tensor:
    mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(3, 1)
    levels = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    return torch.from_numpy(((levels[None, :] - mean) / std).astype(np.float32))


def _on_grid(image_processor, image: Image.Image) -> bool:
    """Whether the processor would leave the image's size as it is (so it does not resample it)."""
    width, height = image.size
    factor = image_processor.patch_size * image_processor.merge_size
    if width % factor or height % factor:
        return False
    if not image_processor.do_resize:
        return True
    smart_resize = getattr(sys.modules[type(image_processor).__module__], "smart_resize", None)
    if smart_resize is None:
        return False
    size = image_processor.size
    target = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"],
                          max_pixels=size["longest_edge"])
    return target == (height, width)
