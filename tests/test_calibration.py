"""The audit's self-test: recall and false merges are measured on planted copies, and decide the threshold."""
from __future__ import annotations

import numpy as np
import pytest

from stagebook import calibration, nearcopy, planting


def _collection(images):
    thumbs = np.stack([nearcopy.thumbnail(i.convert("L")) for i in images])
    return thumbs, np.array([i.size for i in images]), nearcopy.CandidateIndex(thumbs)


@pytest.fixture(scope="module")
def digits():
    images = planting.digit_images(32)[:600]
    return images, *_collection(images)


def test_auto_threshold_finds_the_planted_copies_and_says_so(digits):
    images, thumbs, sizes, index = digits
    sample = np.arange(0, 400, 10)
    found = calibration.self_test([images[k] for k in sample], sample, index, thumbs, sizes, 8, None)
    assert found.chosen and calibration.THRESHOLD_RANGE[0] <= found.threshold <= calibration.THRESHOLD_RANGE[1]
    assert found.planted == len(sample) * len(planting.FAMILIES)
    assert min(found.recall.values()) >= 0.97
    assert found.false_merges <= calibration.false_merges_allowed(found.planted)
    assert "planted copies found" in found.sentence() and "threshold" in found.sentence()


def test_a_fixed_threshold_is_checked_not_changed(digits):
    images, thumbs, sizes, index = digits
    sample = np.arange(0, 400, 20)
    strict = calibration.self_test([images[k] for k in sample], sample, index, thumbs, sizes, 8, 1e-5)
    assert not strict.chosen and strict.threshold == 1e-5
    assert strict.overall < 0.7  # such a threshold misses most copies, and the self-test reports it


def test_false_merges_are_counted_where_distinct_images_look_alike():
    "8-px digits of one class differ little: a loose fixed threshold takes copies for other digits, and says so."
    images = planting.digit_images(8)[:800]
    thumbs, sizes, index = _collection(images)
    sample = np.arange(0, 800, 8)
    loose = calibration.self_test([images[k] for k in sample], sample, index, thumbs, sizes, 8, 0.03)
    assert loose.false_merges > calibration.false_merges_allowed(loose.planted)
    chosen = calibration.self_test([images[k] for k in sample], sample, index, thumbs, sizes, 8, None)
    assert chosen.threshold < 0.03 and chosen.false_merges <= calibration.false_merges_allowed(chosen.planted)
    assert chosen.overall < loose.overall  # the price: fewer planted copies found


def test_two_copies_of_one_image_are_one_image_through_it():
    """A copy planted from one copy of an image may match another copy of it, further from the first than the
    threshold: that is no false merge, since both are within the threshold of the image they were copied from."""
    rng = np.random.default_rng(0)
    photo = planting.natural_images(64, 40)[7]
    images = [photo, planting.plant(photo, "blur", rng), planting.plant(photo, "noise", rng)]
    images += planting.natural_images(64, 40)[10:30]  # others, so the index has more than the three
    thumbs, sizes, index = _collection(images)
    direct = nearcopy.pair_distances(thumbs[[1]], sizes[[1]], thumbs[[2]], sizes[[2]])[0]
    to_photo = nearcopy.pair_distances(thumbs[[0, 0]], sizes[[0, 0]], thumbs[[1, 2]], sizes[[1, 2]])
    third = calibration._through_a_third(index, thumbs, sizes, np.array([1]), np.array([2]), 8)[0]
    assert third == pytest.approx(to_photo.max(), abs=1e-6)
    assert third < direct  # so at a threshold between the two the match is excused, and not before


def test_where_every_threshold_merges_the_fewest_merges_decide():
    "If no threshold keeps false merges within the budget, `auto` takes the largest of those that merge the fewest."
    to_source = np.full(1000, 0.02)
    family = np.array(["noise"] * 1000)
    merges = lambda t: 9 if t < 0.004 or t > 0.006 else 5  # noqa: E731 - more than the allowance everywhere
    chosen = calibration.choose_threshold(to_source, family, merges)
    assert 0.004 <= chosen <= 0.006 and merges(chosen) == 5
    assert merges(chosen * 1.09) > 5  # the largest such: the next candidate up (8% higher) merges more
