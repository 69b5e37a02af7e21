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
    assert found.false_merges <= calibration.FALSE_BUDGET * found.planted
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
    assert loose.false_merges > calibration.FALSE_BUDGET * loose.planted
    chosen = calibration.self_test([images[k] for k in sample], sample, index, thumbs, sizes, 8, None)
    assert chosen.threshold < 0.03 and chosen.false_merges <= calibration.FALSE_BUDGET * chosen.planted
    assert chosen.overall < loose.overall  # the price: fewer planted copies found
