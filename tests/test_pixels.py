"""`pixels.patches` gives the upstream image processor's pixel values bit for bit, or declines; `pixels.join`
concatenates without copying where it can."""

import numpy as np
import pytest
import torch
from PIL import Image

from visionthink.models.presets import build_preset
from visionthink.pixels import join, patches


@pytest.fixture(scope="module", params=["tiny", "real-vocab-small"])
def image_processor(request):
    return build_preset(request.param)[1].image_processor


def _image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


def test_patches_equal_the_processor_bit_for_bit(image_processor):
    images = [_image(w, h, "RGB", seed) for seed, (w, h) in enumerate([(56, 56), (112, 168), (280, 56), (84, 196)])]
    made = patches(image_processor, images)
    expected = image_processor(images, return_tensors="pt")
    assert made is not None
    pixel_values, grids = made
    assert pixel_values.dtype == expected["pixel_values"].dtype == torch.float32
    assert torch.equal(pixel_values, expected["pixel_values"])
    assert torch.equal(grids, expected["image_grid_thw"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_take_the_processors_path(image_processor, mode):
    assert patches(image_processor, [_image(56, 56, "RGB", 0), _image(56, 56, mode, 1)]) is None


def test_images_the_processor_would_resize_take_its_path(image_processor):
    assert patches(image_processor, [_image(100, 100, "RGB", 0)]) is None  # off the 28-px grid
    assert patches(image_processor, [_image(56, 56, "RGB", 0), _image(57, 56, "RGB", 1)]) is None
    assert patches(image_processor, []) is None
    too_big = image_processor.size["longest_edge"] + 28 * 28
    side = int(too_big**0.5) // 28 * 28 + 28
    assert patches(image_processor, [_image(side, side, "RGB", 2)]) is None  # over max_pixels: resized upstream


def test_an_unfamiliar_processor_is_declined(image_processor):
    class Other:
        pass

    assert patches(Other(), [_image(56, 56, "RGB", 0)]) is None


def test_join_views_parts_that_lie_end_to_end_and_copies_the_rest():
    whole = torch.arange(60.0).reshape(12, 5)
    parts = [whole[0:3], whole[3:7], whole[7:12]]
    joined = join(parts)
    assert torch.equal(joined, torch.cat(parts))
    assert joined.data_ptr() == whole.data_ptr()  # a view: nothing was copied
    tail = join([whole[4:6], whole[6:9]])
    assert torch.equal(tail, whole[4:9]) and tail.data_ptr() == whole[4:].data_ptr()
    other = torch.full((2, 5), -1.0)
    # out of order, a gap, another storage, columns that do not lie end to end
    for apart in ([whole[3:7], whole[0:3]], [whole[0:3], whole[4:7]], [whole[0:3], other],
                  [whole[:, :2], whole[:, 2:4]]):
        joined = join(apart)
        assert torch.equal(joined, torch.cat(apart))
        joined += 1000  # a copy: the source is untouched
    assert torch.equal(whole, torch.arange(60.0).reshape(12, 5))
    assert torch.equal(join([whole[2:4]]), whole[2:4])


def test_patches_of_several_images_lie_end_to_end_so_joining_their_rows_copies_nothing(image_processor):
    images = [_image(56, 56, "RGB", 0), _image(112, 56, "RGB", 1)]
    pixel_values, grids = patches(image_processor, images)
    sizes = [int(g.prod()) for g in grids]
    rows = list(pixel_values.split(sizes))
    assert join(rows).data_ptr() == pixel_values.data_ptr() and torch.equal(join(rows), pixel_values)
