"""Planted copies: each family changes the image by its share of the side, never more, and is seeded."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stagebook import planting


@pytest.fixture
def image():
    return planting.natural_images(64, 1, seed=0)[0]


@pytest.mark.parametrize("family", list(planting.FAMILIES))
def test_a_family_keeps_the_mode_changes_the_pixels_and_is_seeded(image, family):
    a = planting.plant(image, family, np.random.default_rng(4))
    b = planting.plant(image, family, np.random.default_rng(4))
    assert a.mode == image.mode
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size != image.size or not np.array_equal(np.asarray(a), np.asarray(image))


def test_shift_moves_by_at_most_a_tenth_and_crop_keeps_most_of_the_image(image):
    rng = np.random.default_rng(0)
    for _ in range(50):
        cropped = planting.crop(image, rng)
        assert all(0.88 <= c / o < 1 for c, o in zip(cropped.size, image.size))
    tiny = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    moved = planting.shift(tiny, rng)  # an 8-px image still moves, by one pixel
    assert not np.array_equal(np.asarray(moved), np.asarray(tiny))


def test_resize_never_makes_a_copy_too_small_to_carry_its_original():
    rng = np.random.default_rng(0)
    tiny = Image.new("L", (8, 8))
    assert all(planting.resize(tiny, rng).size[0] > 8 for _ in range(30))
    big = Image.new("L", (64, 64))
    sides = [planting.resize(big, rng).size[0] for _ in range(60)]
    assert min(sides) >= 32 and max(sides) <= 128 and min(sides) < 58


def test_natural_tiles_are_distinct_and_not_flat():
    tiles = planting.natural_images(32, 400, seed=1)
    assert len(tiles) == 400
    arrays = [np.asarray(t.convert("L"), dtype=np.float32) for t in tiles]
    assert min(a.std() for a in arrays) >= 12
    assert len({t.tobytes() for t in tiles}) == len(tiles)
    assert {t.mode for t in tiles} == {"L", "RGB"}


def test_natural_tiles_share_no_pixel_of_their_photographs():
    "Distinct originals by provenance: no two tiles come from overlapping regions, across all scales."
    tiles = planting.natural_tiles(64, 10_000, seed=2)
    assert len(tiles) > 300
    sizes = {round((box[2] - box[0]) / 64, 1) for _, _, box in tiles}
    assert len(sizes) > 2  # tiles of several scales, so overlaps across scales were possible
    by_photo = {}
    for _, photo, box in tiles:
        by_photo.setdefault(photo, []).append(box)
    for boxes in by_photo.values():
        b = np.array(boxes)
        top, left, bottom, right = (b[:, k] for k in range(4))
        overlap = ((np.maximum(top[:, None], top[None]) < np.minimum(bottom[:, None], bottom[None]))
                   & (np.maximum(left[:, None], left[None]) < np.minimum(right[:, None], right[None])))
        assert overlap.sum() == len(b)  # each box overlaps only itself


def test_turned_photographs_give_more_tiles():
    assert len(planting.natural_images(32, 10_000, turns=4)) > 3 * len(planting.natural_images(32, 10_000))
