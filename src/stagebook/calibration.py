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
from PIL import Image

from . import nearcopy, planting

SAMPLE = 100                 # images per self-test (each gets one copy per family)
RECALL_GOAL = 0.99           # share of planted copies the chosen threshold must find, in the worst family
MARGIN = 1.15                # the threshold sits this far above the sample's own quantile
THRESHOLD_RANGE = (0.001, 0.03)
FALSE_BUDGET = 0.01          # share of planted copies that may be taken for another image


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
    found = index.search(copy_thumbs, neighbours + 1)
    query, item = found[:, 0].astype(np.int64), found[:, 1].astype(np.int64)
    dist = nearcopy.pair_distances(thumbs[item], sizes[item], copy_thumbs[query], copy_sizes[query],
                                   gate=nearcopy.coarse_gate(THRESHOLD_RANGE[1]),
                                   hint=nearcopy.best_offsets(index.points, copy_thumbs, item, query))  # as the audit does
    own = item == origin[query]
    to_source = np.full(len(copies), np.inf)
    np.minimum.at(to_source, query[own], dist[own])
    family = np.array(family)
    # Matches to another image, with that image's own distance to the copy's original: a match is false when the
    # other image cannot be a copy of the original at the threshold in question.
    other = np.flatnonzero(~own & (dist <= THRESHOLD_RANGE[1]))
    between = nearcopy.pair_distances(thumbs[origin[query[other]]], sizes[origin[query[other]]],
                                      thumbs[item[other]], sizes[item[other]]) if len(other) else np.empty(0)

    def false_merges(t: float) -> int:
        # Judged as the clusters judge it: an image further than t from the original is not its copy at t. (So a
        # copy matched to another real copy of its original counts too: the estimate errs towards a lower threshold.)
        return len(np.unique(query[other[(dist[other] <= t) & (between > t)]]))

    if threshold is None:
        threshold, chosen = choose_threshold(to_source, family, false_merges), True
    else:
        chosen = False
    hit = to_source <= threshold
    return SelfTest(threshold=threshold, chosen=chosen, planted=len(copies), found=int(hit.sum()),
                    recall={name: float(hit[family == name].mean()) for name in families},
                    false_merges=false_merges(threshold), sample=len(images), distances=to_source, families=family)


def choose_threshold(to_source: np.ndarray, family: np.ndarray, false_merges) -> float:
    """The threshold that finds RECALL_GOAL of the planted copies in every family (with MARGIN), lowered while
    that would merge more than FALSE_BUDGET of the planted copies with other images."""
    seen = [to_source[(family == name) & np.isfinite(to_source)] for name in np.unique(family)]
    worst = max((np.quantile(d, RECALL_GOAL) for d in seen if len(d)), default=THRESHOLD_RANGE[1])
    threshold = float(np.clip(worst * MARGIN, *THRESHOLD_RANGE))
    allowed = max(1, int(FALSE_BUDGET * len(to_source)))
    for t in np.geomspace(threshold, THRESHOLD_RANGE[0], 40):
        if false_merges(t) <= allowed:
            return float(t)
    return THRESHOLD_RANGE[0]
