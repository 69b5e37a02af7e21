"""Near-copy search: candidates, aligned verification and clusters that do not chain, on data we did not make."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagebook import nearcopy, planting


def _features(images):
    return (np.stack([nearcopy.thumbnail(i.convert("L")) for i in images]), np.array([i.size for i in images]))


@pytest.fixture(scope="module")
def photos():
    return planting.natural_images(48, 300, seed=3)


@pytest.mark.parametrize("family", list(planting.FAMILIES))
def test_each_family_of_copies_is_closer_than_other_photos_copies(photos, family):
    rng = np.random.default_rng(0)
    originals = photos[:40]
    copies = [planting.plant(img, family, rng) for img in originals]
    (ta, sa), (tb, sb) = _features(originals), _features(copies)
    own = nearcopy.pair_distances(ta, sa, tb, sb)
    others = nearcopy.pair_distances(ta, sa, np.roll(tb, 1, axis=0), np.roll(sb, 1, axis=0))
    assert np.quantile(own, 0.9) < 0.03, f"{family}: copies at {np.sort(own)[-5:]}"
    assert np.quantile(own, 0.9) < np.quantile(others, 0.05)  # a copy of another photo is further than most copies


@pytest.mark.parametrize("family, side", [("blur", 64), ("shift", 64), ("shift", 128)])
def test_blurred_and_moved_copies_of_textured_photos_stay_close(family, side):
    """On 64-px photo tiles, blurred copies lay up to 0.03 from their originals (97th percentile) before blur matching,
    and 8% of moved ones were lost at the 16-px prefilter before its blurred second chance; at 128 px, copies moved by
    a quarter of a 32-px pixel lay up to 0.02 away before the quarter-pixel step. All now stay within 0.01."""
    originals = planting.natural_images(side, 150, seed=4)
    rng = np.random.default_rng(1)
    copies = [planting.plant(img, family, rng) for img in originals]
    (ta, sa), (tb, sb) = _features(originals), _features(copies)
    rows = np.arange(len(originals))
    hint = nearcopy.best_offsets(nearcopy.CandidateIndex(ta).points, tb, rows, rows)  # as the audit starts them
    own = nearcopy.pair_distances(ta, sa, tb, sb, gate=nearcopy.coarse_gate(0.01), hint=hint)
    assert np.quantile(own, 0.97) < 0.01, f"{family}: copies at {np.sort(own)[-6:]}"


def test_blur_matching_helps_only_pairs_that_are_close_already(photos, monkeypatch):
    "Blurring the sharper image never makes a pair further apart, and does not bring other photos' copies near."
    rng = np.random.default_rng(2)
    originals = photos[:60]
    copies = [planting.plant(img, "noise", rng) for img in originals]
    (ta, sa), (tb, sb) = _features(originals), _features(copies)
    others = nearcopy.pair_distances(ta, sa, np.roll(tb, 1, axis=0), np.roll(sb, 1, axis=0))
    assert np.quantile(others, 0.05) > 0.01
    own = nearcopy.pair_distances(ta, sa, tb, sb)
    monkeypatch.setattr(nearcopy, "BLUR_GATE", -1.0)  # no pair is that close: no blur matching
    plain = nearcopy.pair_distances(ta, sa, tb, sb)
    assert (own <= plain + 1e-6).all() and (own < plain - 1e-4).any()


def test_a_moved_copy_is_a_candidate_and_its_hint_aligns_it():
    digits = planting.digit_images(64)[:300]
    moved = planting.shift(digits[7], np.random.default_rng(1))
    thumbs, sizes = _features(digits)
    index = nearcopy.CandidateIndex(thumbs)
    qt, qs = _features([moved])
    found = index.search(qt, 9)
    row = found[found[:, 1] == 7]
    assert len(row) == 1, "the original is not among the moved copy's candidates"
    with_hint = nearcopy.pair_distances(thumbs[[7]], sizes[[7]], qt, qs, hint=row[:, 2:4])
    assert with_hint[0] < 0.005


def test_a_pairs_best_offset_depends_on_the_pair_alone_and_aligns_it():
    digits = planting.digit_images(64)[:300]
    moved = planting.shift(digits[7], np.random.default_rng(1))
    thumbs, sizes = _features(digits)
    qt, qs = _features([moved])
    offset = nearcopy.best_offsets(nearcopy.CandidateIndex(thumbs).points, qt, np.array([7]), np.array([0]))
    assert np.abs(offset).sum() > 0  # the copy is moved: alignment does not start at (0, 0)
    smaller = np.concatenate([thumbs[:3], thumbs[[7]]])  # another collection holding the same image
    assert (nearcopy.best_offsets(nearcopy.CandidateIndex(smaller).points, np.concatenate([qt, qt]), np.array([3, 3]),
                                  np.array([1, 0])) == offset).all()
    assert nearcopy.pair_distances(thumbs[[7]], sizes[[7]], qt, qs, hint=offset)[0] < 0.005


def test_star_clusters_never_chain():
    "A path a-b-c-d of verified pairs (a and c not verified) must not become one cluster."
    pairs = pd.DataFrame({"i": [0, 1, 2], "j": [1, 2, 3], "distance": [0.001] * 3})
    cluster = nearcopy.star_clusters(4, pairs, np.array(["a", "b", "c", "d"]))
    assert len(set(cluster)) == 2
    verified = {(0, 1), (1, 2), (2, 3)}
    for member, rep in enumerate(cluster):
        assert member == rep or (min(member, rep), max(member, rep)) in verified


def test_star_clusters_are_verified_against_their_representative_on_random_graphs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 60
        i, j = rng.integers(0, n, 120), rng.integers(0, n, 120)
        keep = i != j
        pairs = pd.DataFrame({"i": np.minimum(i, j)[keep], "j": np.maximum(i, j)[keep], "distance": 0.0}).drop_duplicates()
        verified = set(zip(pairs.i, pairs.j))
        cluster = nearcopy.star_clusters(n, pairs, np.array([f"{k:03d}" for k in range(n)]))
        for member, rep in enumerate(cluster):
            assert member == rep or (min(member, rep), max(member, rep)) in verified
            assert cluster[rep] == rep  # a representative represents itself


def _planted(originals, per_family, seed=5):
    rng = np.random.default_rng(seed)
    images, origin, family = list(originals), list(range(len(originals))), [""] * len(originals)
    for name in planting.FAMILIES:
        for k in rng.choice(len(originals), per_family, replace=False):
            images.append(planting.plant(originals[k], name, rng))
            origin.append(int(k))
            family.append(name)
    return images, np.array(origin), np.array(family)


def _recall_and_wrong(images, origin, family, threshold):
    thumbs, sizes = _features(images)
    found = set(zip(*nearcopy.near_pairs(thumbs, sizes, threshold)[["i", "j"]].to_numpy().T))
    recall = {name: np.mean([(origin[r], r) in found for r in np.flatnonzero(family == name)]) for name in planting.FAMILIES}
    return recall, sum(origin[a] != origin[b] for a, b in found)


def test_near_pairs_find_planted_copies_of_digits():
    "The bench's bar on a small planted set of 24-px digits: >= 97% per family, pairs between originals <= 1% of items."
    images, origin, family = _planted(planting.digit_images(24)[:400], 40)
    recall, wrong = _recall_and_wrong(images, origin, family, 0.005)
    assert min(recall.values()) >= 0.97, recall
    assert wrong <= 0.01 * len(images), f"{wrong} pairs between distinct originals"


def test_self_pairs_are_the_unique_pairs_of_the_search_in_any_chunking(photos, monkeypatch):
    "The compact pair list the audit uses is exactly the (i < j) pairs of the full search, chunk borders included."
    images, _, _ = _planted(photos, 10)
    thumbs, _ = _features(images)
    index = nearcopy.CandidateIndex(thumbs)
    rows = index.search(thumbs, 9, shifts=nearcopy.SELF_SHIFTS).astype(np.int64)
    rows = rows[rows[:, 0] != rows[:, 1]]
    expected = np.unique(np.stack([rows[:, :2].min(axis=1), rows[:, :2].max(axis=1)], axis=1), axis=0)
    assert len(expected) > len(thumbs)  # every image has candidates: the comparison has something to compare
    assert np.array_equal(index.self_pairs(thumbs, 9), expected)
    monkeypatch.setattr(nearcopy, "QUERY_CHUNK", 37)  # a pair found from both ends may span two chunks
    assert np.array_equal(index.self_pairs(thumbs, 9), expected)


def test_near_pairs_in_textured_photos_stay_at_the_measured_level(photos):
    """48-px photo tiles at 0.01: 95-100% per family with blur matching, the blurred second chance and quarter pixels
    (at least 60% before them). This guards the level measured, not `make bench`'s 97% in every family."""
    images, origin, family = _planted(photos, 40)
    recall, wrong = _recall_and_wrong(images, origin, family, 0.01)
    assert min(recall.values()) >= 0.9 and np.mean(list(recall.values())) >= 0.95, recall
    assert wrong <= 0.02 * len(images)


def test_whole_pixel_crop_alignment_slices_one_resampling_with_the_same_numbers():
    "The crop search resamples once and slices; it must give exactly what resampling at every offset gives."
    import torch

    from stagebook import nearcopy
    rng = np.random.default_rng(3)
    for side, reach, most in ((16, 4, 0), (32, 1, 6)):
        a = torch.from_numpy((rng.random((500, side, side)) * 255).astype(np.float32))
        b = torch.from_numpy((rng.random((500, side, side)) * 255).astype(np.float32))
        b[:250] = a[:250] + torch.from_numpy(rng.normal(0, 8, (250, side, side)).astype(np.float32))  # some copies
        scale = torch.from_numpy(rng.uniform(0.8, 1.0, (500, 2)).astype(np.float32))
        centre = torch.from_numpy(rng.integers(-most, most + 1, (500, 2)).astype(np.float32))
        each = nearcopy._best_alignment(a, b, scale, centre, nearcopy._grid(float(reach), 1.0))
        sliced = nearcopy._best_whole_alignment(a, b, scale, centre, reach)
        assert torch.equal(each[0], sliced[0]) and torch.equal(each[1], sliced[1])


def test_the_integer_blur_gives_exactly_the_float_blur():
    from stagebook import nearcopy
    thumbs = np.random.default_rng(5).integers(0, 256, (300, 32, 32), dtype=np.uint8)
    thumbs[:5] = 255  # the largest sums
    fast = nearcopy._smoothed(thumbs)
    assert fast.dtype == np.float32 and np.array_equal(fast, nearcopy._smoothed_float(thumbs))


def test_the_blur_made_at_16_px_is_the_blur_pooled():
    thumbs = np.random.default_rng(6).integers(0, 256, (300, 32, 32), dtype=np.uint8)
    thumbs[:5] = 255  # the largest sums: 64 x 255 must stay exact in float32
    direct = nearcopy._smoothed16(thumbs)
    assert direct.dtype == np.float32 and np.array_equal(direct, nearcopy.pooled(nearcopy._smoothed(thumbs), 16))


def _nearest_one_by_one(index, thumbs, k, shifts):
    """The candidate rule, spelled out a query at a time in integers (an exact index: every row is in its one list):
    per move, the m closest rows within the gate by (squared distance, row); then per item its closest probe (ties:
    the earlier move); then the k + PROBE_NEAREST closest (ties: the smaller row)."""
    items = index.whole.astype(np.int64)
    gate = nearcopy.gate_squared(nearcopy.CANDIDATE_GATE)
    hits = {}
    for number, (dx, dy) in enumerate(shifts):
        probe = nearcopy.whole_keys(thumbs, [(dx, dy)])[:, 0].astype(np.int64)
        take = min(k if (dx, dy) == (0, 0) else nearcopy.PROBE_NEAREST, len(index))
        for q in range(len(thumbs)):
            squared = ((items - probe[q]) ** 2).sum(axis=1)
            near = sorted((int(sq), row) for row, sq in enumerate(squared) if sq <= gate)[:take]
            for sq, row in near:
                if (q, row) not in hits or sq < hits[q, row][0]:  # a tie keeps the earlier probe
                    hits[q, row] = (sq, dx, dy)
    rows = sorted((q, sq, row, dx, dy) for (q, row), (sq, dx, dy) in hits.items())
    out, seen = [], {}
    for q, sq, row, dx, dy in rows:
        seen[q] = seen.get(q, 0) + 1
        if seen[q] <= k + nearcopy.PROBE_NEAREST:
            out.append((q, row, dx, dy, sq / (2.0 * nearcopy.KEY_SCALE ** 2)))
    return np.array(out)


def test_the_vectorised_candidate_rule_is_the_rule_one_query_at_a_time(photos):
    thumbs, _ = _features(photos[:150])
    thumbs = np.concatenate([thumbs, np.roll(thumbs[:40], 2, axis=2), thumbs[:10]])  # moved copies, exact ties
    index = nearcopy.CandidateIndex(thumbs)
    found = index.search(thumbs[:120], 5)
    assert np.array_equal(found, _nearest_one_by_one(index, thumbs[:120], 5, nearcopy.PROBE_SHIFTS))


def test_tone_matching_maps_grey_levels_in_order_onto_the_others():
    "Each image's greys take the other's histogram, and equal greys stay equal (so the map is a function of grey)."
    rng = np.random.default_rng(3)
    a = rng.integers(0, 8, (5, 32, 32)).astype(np.uint8) * 30  # many ties
    b = rng.integers(0, 256, (5, 32, 32)).astype(np.uint8)
    toned = nearcopy.tone_matched(a, b)
    for k in range(len(a)):
        grey, mapped = a[k].ravel(), toned[k].ravel()
        levels = np.unique(grey)
        values = [np.unique(mapped[grey == g]) for g in levels]
        assert all(len(v) == 1 for v in values)  # one value per grey level of a
        assert np.all(np.diff([v[0] for v in values]) >= 0)  # in the same order
        assert mapped.mean() == pytest.approx(b[k].mean(), abs=1e-3)  # and the mass of b's histogram
    assert np.allclose(nearcopy.tone_matched(b, b), b, atol=1e-4)  # onto its own histogram: itself


def test_a_copy_relit_until_it_clips_is_as_close_as_the_other_families(monkeypatch):
    """Brightness and contrast changed until black or white clip: on 64-px digits such copies lay as far from their
    originals as distinct digits do (0.0023 at the 97th percentile) until grey levels were matched."""
    digits = planting.digit_images(64)[:80]
    relit = [Image.fromarray(np.clip(np.asarray(d, np.float32) * 1.2 + 20, 0, 255).astype(np.uint8), "L")
             for d in digits]
    (ta, sa), (tb, sb) = _features(digits), _features(relit)
    own = nearcopy.pair_distances(ta, sa, tb, sb)
    others = nearcopy.pair_distances(ta, sa, np.roll(tb, 1, axis=0), np.roll(sb, 1, axis=0))
    assert np.quantile(own, 0.97) < 0.0005 and np.quantile(others, 0.05) > 0.005
    monkeypatch.setattr(nearcopy, "TONE_GATE", 0.0)
    plain = nearcopy.pair_distances(ta, sa, tb, sb)
    assert np.quantile(plain, 0.97) > 0.001  # without tone matching the clipped copies are far
