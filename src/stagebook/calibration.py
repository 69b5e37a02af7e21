"""The audit's self-test: plant copies of the team's own images, then see how many the near-copy search finds.

A leakage figure of 0 means something only if the detector would have seen the copies that exist. So every audit
takes a seeded sample of the collection, makes one copy of each sampled image per transform family
(`stagebook.planting`), and asks the same index and verification the audit uses: is the original found, and is any
other image taken for it? The threshold is then chosen from these distances (or a fixed one is checked), and the
data document states the recall per family and the false merges it saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from . import nearcopy, planting

SAMPLE = 100                 # images per self-test (each gets one copy per family)
RECALL_GOAL = 0.99           # share of planted copies the chosen threshold must find, in the worst family
MARGIN = 1.15                # the threshold sits this far above the sample's own quantile
THRESHOLD_RANGE = (0.001, 0.03)
FALSE_BUDGET = 0.002         # share of planted copies that may be taken for another image (at least one)


@dataclass
class SelfTest:
    "What planting copies found: the threshold used, recall per family, false merges, and how many were planted."
    threshold: float
    chosen: bool                       # True: chosen from the planted copies; False: fixed by the team and checked
    planted: int = 0
    found: int = 0
    recall: dict = field(default_factory=dict)    # family -> share found
    false_merges: int = 0              # planted copies also matched to an image that is not their original
    sample: int = 0
    distances: np.ndarray = field(default=None, repr=False)  # per planted copy: to its original (inf: not a candidate)
    families: np.ndarray = field(default=None, repr=False)

    @property
    def overall(self) -> float:
        return self.found / self.planted if self.planted else float("nan")

    def sentence(self) -> str:
        if not self.planted:
            return "self-test: too few images to plant copies"
        worst = min(self.recall, key=self.recall.get)
        how = "chosen from them" if self.chosen else "set in the params and checked"
        return (f"self-test: {100 * self.overall:.1f}% of {self.planted} planted copies found "
                f"(weakest family {worst}: {100 * self.recall[worst]:.0f}%), {self.false_merges} false merges; "
                f"threshold {self.threshold:.4f} ({how})")

    def numbers(self) -> dict:
        return {"self_test_planted": self.planted, "self_test_recall": round(self.overall, 4),
                "self_test_false_merges": self.false_merges, "near_threshold_used": round(self.threshold, 5),
                **{f"self_test_recall_{k}": round(v, 4) for k, v in self.recall.items()}}


def _standard(img: Image.Image) -> Image.Image:
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def self_test(images: list[Image.Image], sources: np.ndarray, index: nearcopy.CandidateIndex, thumbs: np.ndarray,
              sizes: np.ndarray, neighbours: int, threshold: float | None, seed: int = 0) -> SelfTest:
    """Plant one copy per family of each image in `images` (decoded; `sources[k]` is its row in `thumbs`), search
    them as the audit does, and choose the threshold (`threshold=None`) or check the given one."""
    rng = np.random.default_rng(seed)
    families = list(planting.FAMILIES)
    copies, family, source = [], [], []
    for name in families:
        for img, row in zip(images, sources):
            copy = planting.plant(_standard(img), name, rng)
            copies.append(nearcopy.thumbnail(copy.convert("L")))
            family.append(name)
            source.append((row, copy.size))
    if not copies:
        return SelfTest(threshold if threshold is not None else THRESHOLD_RANGE[0] * 3, threshold is None)
    copy_thumbs = np.stack(copies)
    copy_sizes = np.array([s for _, s in source])
    origin = np.array([r for r, _ in source])
    query, item, dist = _matches(index, thumbs, sizes, copy_thumbs, copy_sizes, neighbours)
    own = item == origin[query]
    to_source = np.full(len(copies), np.inf)
    np.minimum.at(to_source, query[own], dist[own])
    family = np.array(family)
    # Matches to another image B. At a threshold t such a match is false when B is not the original's copy at t:
    # neither within t of it, nor within t of an image that is within t of it (then the original and B share a
    # representative, and the clusters hold them together anyway).
    other = np.flatnonzero(~own & (dist <= THRESHOLD_RANGE[1]))
    first, second = origin[query[other]], item[other]
    between = nearcopy.pair_distances(thumbs[first], sizes[first], thumbs[second], sizes[second]) \
        if len(other) else np.empty(0)
    linked = np.minimum(between, _through_a_third(index, thumbs, sizes, first, second, neighbours))

    def false_merges(t: float) -> int:
        return len(np.unique(query[other[(dist[other] <= t) & (linked > t)]]))

    if threshold is None:
        threshold, chosen = choose_threshold(to_source, family, false_merges), True
    else:
        chosen = False
    hit = to_source <= threshold
    return SelfTest(threshold=threshold, chosen=chosen, planted=len(copies), found=int(hit.sum()),
                    recall={name: float(hit[family == name].mean()) for name in families},
                    false_merges=false_merges(threshold), sample=len(images), distances=to_source, families=family)


def _matches(index: nearcopy.CandidateIndex, thumbs: np.ndarray, sizes: np.ndarray, query_thumbs: np.ndarray,
             query_sizes: np.ndarray, neighbours: int):
    """Each query's candidates in the index, verified as the audit verifies them: (query row, indexed row, distance)."""
    found = index.search(query_thumbs, neighbours + 1)
    query, item = found[:, 0].astype(np.int64), found[:, 1].astype(np.int64)
    dist = nearcopy.pair_distances(thumbs[item], sizes[item], query_thumbs[query], query_sizes[query],
                                   gate=nearcopy.coarse_gate(THRESHOLD_RANGE[1]),
                                   hint=nearcopy.best_offsets(index.points, query_thumbs, item, query))
    return query, item, dist


def _through_a_third(index: nearcopy.CandidateIndex, thumbs: np.ndarray, sizes: np.ndarray, first: np.ndarray,
                     second: np.ndarray, neighbours: int) -> np.ndarray:
    """Per pair (first[k], second[k]) of indexed images, the smallest t at which both are within t of one third image
    (inf if none is a candidate of both): the distance at which the two fall into one star cluster through it."""
    out = np.full(len(first), np.inf)
    rows = np.unique(np.r_[first, second])
    if not len(rows):
        return out
    query, item, dist = _matches(index, thumbs, sizes, thumbs[rows], sizes[rows], neighbours)
    query = rows[query]
    keep = query != item
    near = pd.DataFrame({"row": query[keep], "third": item[keep], "d": dist[keep]})
    pairs = pd.DataFrame({"k": np.arange(len(first)), "a": first, "b": second})
    both = pairs.merge(near.rename(columns={"row": "a", "d": "da"}), on="a").merge(
        near.rename(columns={"row": "b", "d": "db"}), on=["b", "third"])
    both = both[(both.third != both.a) & (both.third != both.b)]
    if len(both):
        worse = np.maximum(both.da.to_numpy(), both.db.to_numpy())
        np.minimum.at(out, both.k.to_numpy(), worse)
    return out


def false_merges_allowed(planted: int) -> int:
    "How many planted copies `auto` lets be taken for another image: FALSE_BUDGET of them, and at least one."
    return max(1, int(FALSE_BUDGET * planted))


def choose_threshold(to_source: np.ndarray, family: np.ndarray, false_merges) -> float:
    """The threshold that finds RECALL_GOAL of the planted copies in every family (with MARGIN), lowered while
    that would merge more than FALSE_BUDGET of the planted copies with other images (or, where every threshold
    would, more than the fewest any threshold merges: the largest threshold that merges no more than that)."""
    seen = [to_source[(family == name) & np.isfinite(to_source)] for name in np.unique(family)]
    worst = max((np.quantile(d, RECALL_GOAL) for d in seen if len(d)), default=THRESHOLD_RANGE[1])
    threshold = float(np.clip(worst * MARGIN, *THRESHOLD_RANGE))
    candidates = np.geomspace(threshold, THRESHOLD_RANGE[0], 40)
    merges = np.array([false_merges(t) for t in candidates])
    allowed = max(false_merges_allowed(len(to_source)), int(merges.min()))
    return float(candidates[np.argmax(merges <= allowed)])
