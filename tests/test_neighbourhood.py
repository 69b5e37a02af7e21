"""Remembered candidate tables, updated for new and gone images, are the tables a search from scratch makes over
the same coarse lists: on photo tiles and digits we did not make, with exact copies (ties) and emptied probes."""
from __future__ import annotations

import numpy as np
import pytest

from stagebook import nearcopy, neighbourhood, planting


@pytest.fixture(scope="module")
def thumbs():
    "48-px photo tiles, 8-px digits (alike: crowded probes) and exact copies of some (distances that tie)."
    images = planting.natural_images(48, 260, seed=5) + planting.digit_images(8)[:500]
    out = np.stack([nearcopy.thumbnail(i.convert("L")) for i in images])
    return np.concatenate([out, out[:30], out[300:330]])


def _ids(count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(2 ** 60, count, replace=False)).astype(np.int64)


def _equal(a: neighbourhood.Tables, b: neighbourhood.Tables) -> None:
    assert np.array_equal(a.ids, b.ids)
    for name in ("rows", "squared", "lists", "moved"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("lists", [False, True], ids=["exact index", "coarse lists"])
def test_updated_tables_are_the_tables_searched_from_scratch(thumbs, lists, monkeypatch):
    if lists:  # an IVF of about 25 lists over this small collection
        monkeypatch.setattr(nearcopy, "EXACT_BELOW", 200)
        monkeypatch.setattr(nearcopy, "LIST_SIZE", 32)
    ids = _ids(len(thumbs), 1)
    rng = np.random.default_rng(2)
    before = np.sort(rng.choice(len(thumbs), int(0.9 * len(thumbs)), replace=False))
    gone = before[rng.choice(len(before), 40, replace=False)]
    after = np.setdiff1d(np.arange(len(thumbs)), gone)  # 10% new, 40 gone
    first = nearcopy.CandidateIndex(thumbs[before], ids[before])
    memo = neighbourhood.build(first, thumbs[before], 9, len(before))
    assert (memo.trained is not None) == lists
    assert neighbourhood.reusable(memo, len(after), 9)
    index = nearcopy.CandidateIndex(thumbs[after], ids[after], trained=memo.trained)
    # the test has something to test: probes that held a gone image and were full, and new images that came closer
    lost = np.isin(memo.rows, np.searchsorted(before, gone))
    assert lost.any(axis=1).sum() >= 20
    trained_size = memo.trained_size
    updated = neighbourhood.update(index, thumbs[after], memo)
    assert memo.rows is None and memo.moved is None  # consumed, so the old and new tables are not held whole at once
    scratch = neighbourhood.build(index, thumbs[after], 9, trained_size)
    _equal(updated, scratch)
    pairs = index.self_pairs(None, 9, tables=(updated.rows, updated.squared))
    assert len(pairs) > len(after) and np.array_equal(pairs, index.self_pairs(thumbs[after], 9))
    if not lists:  # an exact index has no history: the same as an index made today
        _equal(updated, neighbourhood.build(nearcopy.CandidateIndex(thumbs[after], ids[after]), thumbs[after], 9,
                                            len(after)))


def test_a_probe_whose_library_hits_all_tie_still_keeps_the_smallest_rows(monkeypatch):
    """Forty exact copies: every squared distance is 0. The library may return any of them; here it returns the last
    ones, as it may, and the probe asks again until it is sure, keeping rows 0..m-1."""
    tile = np.asarray(planting.natural_images(32, 1, seed=7)[0].convert("L").resize((32, 32)))
    index = nearcopy.CandidateIndex(np.repeat(tile[None], 40, axis=0))
    asked = []

    def last_ones(whole, take, lists):
        asked.append(take)
        found = np.tile(np.arange(40 - take, 40)[::-1], (len(whole), 1))
        return np.zeros(found.shape, np.float32), found

    monkeypatch.setattr(index, "_search", last_ones)
    keys = index.whole[:3].astype(np.float32)
    rows, squared = index.probe(keys, 5, index.assign(keys))
    assert (squared == 0).all() and (rows == np.arange(5)).all() and asked[0] < 40 and asked[-1] == 40


def test_tables_are_not_reused_across_a_change_of_rule_or_of_scale(thumbs, monkeypatch):
    memo = neighbourhood.build(nearcopy.CandidateIndex(thumbs[:400]), thumbs[:400], 9, 400)
    assert neighbourhood.reusable(memo, 450, 9)
    assert not neighbourhood.reusable(memo, 450, 7)           # another neighbour count
    assert not neighbourhood.reusable(memo, 6000, 9)          # past the exact index's size: lists are trained
    assert not neighbourhood.reusable(None, 450, 9)
    monkeypatch.setattr(nearcopy, "EXACT_BELOW", 200)
    monkeypatch.setattr(nearcopy, "LIST_SIZE", 32)
    trained = neighbourhood.build(nearcopy.CandidateIndex(thumbs[:400]), thumbs[:400], 9, 400)
    assert neighbourhood.reusable(trained, 790, 9) and neighbourhood.reusable(trained, 200, 9)
    assert not neighbourhood.reusable(trained, 801, 9)        # twice the size the lists were trained for: again


def test_an_index_given_the_remembered_lists_of_its_images_holds_what_a_plain_add_holds(thumbs, monkeypatch):
    """The audit adds remembered images to the list they were in last time (`Tables.homes`) instead of asking the
    coarse quantizer again: the lists must hold the same rows in the same order, and a home that is no list of the
    index (a damaged cache) is assigned afresh."""
    monkeypatch.setattr(nearcopy, "EXACT_BELOW", 200)
    monkeypatch.setattr(nearcopy, "LIST_SIZE", 32)
    ids = _ids(len(thumbs), 3)
    rng = np.random.default_rng(4)
    before = np.sort(rng.choice(len(thumbs), int(0.9 * len(thumbs)), replace=False))
    after = np.setdiff1d(np.arange(len(thumbs)), before[rng.choice(len(before), 40, replace=False)])
    first = nearcopy.CandidateIndex(thumbs[before], ids[before])
    memo = neighbourhood.build(first, thumbs[before], 9, len(before))
    for number, rows in enumerate(first.members()):
        assert (memo.homes[rows] == number).all()
    known = np.isin(ids[after], memo.ids)
    homes = np.full(len(after), -1, np.int32)
    homes[known] = memo.homes[np.searchsorted(memo.ids, ids[after][known])]
    assert known.sum() > 300 and (~known).sum() > 20
    homes[np.flatnonzero(known)[:3]] = 10 ** 6
    given = nearcopy.CandidateIndex(thumbs[after], ids[after], trained=memo.trained, homes=homes)
    plain = nearcopy.CandidateIndex(thumbs[after], ids[after], trained=memo.trained)
    assert np.array_equal(given.homes, plain.homes) and len(given) == len(plain) == len(after)
    assert all(np.array_equal(a, b) for a, b in zip(given.members(), plain.members()))
