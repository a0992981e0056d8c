"""GRPO's prompt rows scale training images into a pixel range before their views (the 7B recipe: the release's)."""

from __future__ import annotations

from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from visionthink.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS, PixelGrid
from visionthink.train import grpo_env

QWEN = PixelGrid(min_pixels=3136, max_pixels=12845056)


def _folder(tmp_path, sizes):
    rows = Dataset.from_dict({"image": [Image.new("RGB", size, "white") for size in sizes],
                              "question": ["q"] * len(sizes), "answer": ["a"] * len(sizes)},
                             features=Features({"image": ImageFeature(), "question": Value("string"),
                                                "answer": Value("string")}))
    rows.save_to_disk(str(tmp_path / "data"))
    return str(tmp_path / "data")


def test_disk_rows_are_clamped_to_the_release_range(tmp_path):
    data = _folder(tmp_path, [(300, 200), (4000, 3000), (1280, 960)])
    clamped = grpo_env.disk_dataset(data, QWEN, pixel_range=(RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS))
    plain = grpo_env.disk_dataset(data, QWEN)
    tokens = [QWEN.tokens(*image.size) for image in clamped["high_res_image"]]
    assert tokens[0] >= RELEASE_MIN_PIXELS * 0.9 / 784 and tokens[1] <= 5838  # scaled up; scaled down
    assert QWEN.tokens(*plain["high_res_image"][1].size) > 15000  # 4000x3000 as it was: 15,300 tokens and more
    assert clamped["high_res_image"][2].size == plain["high_res_image"][2].size  # in range: untouched
    assert clamped["image"][1].size[0] < clamped["high_res_image"][1].size[0]


def test_synthetic_rows_are_unchanged_without_a_range():
    from visionthink.data import synth
    from visionthink.images import make_views

    item = synth.split_items("train", 1, seed=0)[0]
    grid = PixelGrid(min_pixels=28 * 28, max_pixels=168 * 112)
    row, views = grpo_env.prompt_row(item, grid), make_views(item.image, grid)
    assert row["high_res_image"].tobytes() == views.high.tobytes() and row["image"].tobytes() == views.low.tobytes()


def test_release_rows_show_the_original_halved(tmp_path):
    from visionthink.profiles import RELEASE, VISIONTHINK

    data = _folder(tmp_path, [(1000, 700)])
    image = Image.new("RGB", (1000, 700), "white")
    release = grpo_env.disk_dataset(data, QWEN, protocol="release")
    plain = grpo_env.disk_dataset(data, QWEN)
    assert release["image"][0].size == RELEASE.views(image, QWEN).low.size
    assert plain["image"][0].size == VISIONTHINK.views(image, QWEN).low.size
    assert release["high_res_image"][0].size == plain["high_res_image"][0].size
