"""Near copies: which images are shifted, cropped, re-lit, noisy, blurred, re-encoded or resized copies of another.

Every image is described by a grey 32-px thumbnail (uint8) and its size. Three steps, none of them all-pairs:
- candidates: a nearest-neighbour index over the inner 6×6 of 8-px normalised thumbnails (exact below
  EXACT_BELOW images; above, faiss IVF lists of about LIST_SIZE images found through a small HNSW graph of their
  centroids, whose cost per query does not grow with the collection), probed with the query moved in half-pixel
  steps, so a copy moved by up to an eighth of its side is a neighbour. Within one collection each pair is probed
  from both ends, so half the moves suffice (`SELF_SHIFTS`). Keys are whole numbers (bytes), and each probe keeps
  its m closest by (exact squared distance, row): a rule that an audit with a cache updates for new images
  (`stagebook.neighbourhood`) and gets what a search from scratch gets;
- verification: each candidate pair is aligned and compared. Alignment searches whole pixels at 32 px around the
  pair's own best offset at 8 px (`best_offsets`: a function of the two images, not of the probe that found them),
  then half pixels (and quarter pixels for pairs that come close); for a pair whose sizes say one is a crop of the other
  (both sides 80-100%), the smaller is placed on the larger's pixel scale (searched at 16 px first). Both thumbnails
  are lightly smoothed, and the overlap's outer 2 px (where a moved copy's filled edge blends in) are left out. The
  distance is 1 - Pearson correlation over the overlap, so brightness and contrast do not count; for pairs that come
  close, it is also measured with the sharper image blurred to meet the other, and both blurred (`BLUR_SIGMA`), so a
  blurred, resized or re-encoded copy of a textured image is not as far from its original as another image is; and
  with the less clipped image's grey levels mapped onto the other's (`tone_matched`), so a copy re-lit until it
  clips is not either;
- clusters without chaining (`star_clusters`): every member is a verified copy of its cluster's representative.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from . import cpus

THUMB = 32                 # side of the stored thumbnail
HNSW_LINKS = 16            # graph degree of the HNSW graph over the IVF lists' centres
PROBE_SHIFTS = [(dx, dy) for dy in (-4, -2, 0, 2, 4) for dx in (-4, -2, 0, 2, 4)]  # at 32 px: up to 12.5% of the side
# A pair (a, b) that a's probe moved by (dx, dy) finds, b's probe moved by (-dx, -dy) finds too: a collection searched
# against itself needs only one of each opposite pair of moves (measured: the same verified pairs, half the time).
SHIFTS_BY_SIZE = sorted(PROBE_SHIFTS, key=lambda s: (abs(s[0]) + abs(s[1]), s))
SELF_SHIFTS = [(dx, dy) for dx, dy in PROBE_SHIFTS if (dy, dx) >= (0, 0)]
PROBE_NEAREST = 4          # neighbours kept per moved probe
EXACT_BELOW = 5000         # collections smaller than this are searched exactly (all pairs)
LIST_SIZE = 128            # images per IVF list above that
NPROBE = 3                 # IVF lists visited per query
QUERY_CHUNK = 32768        # queries prepared at once (bounds memory)
CANDIDATE_GATE = 0.2       # 1 - correlation at 8 px within which a candidate is kept (8-px images moved a pixel: 0.2)
MARGIN = 2                 # 32-px pixels at the edges of an overlap left out: a moved copy's filled edge blends there
PREFILTER = 0.15          # 1 - correlation at 16 px beyond which a pair is not searched at 32 px (copies: <= 0.12),
SECOND_CHANCE = 0.3        # unless it is within this and, both blurred by PREFILTER_BLUR, within BLURRED_PREFILTER:
PREFILTER_BLUR = 1.0       # a textured copy half a 16-px pixel from the nearest whole-pixel offset lies up to 0.3
BLURRED_PREFILTER = 0.1    # apart, and within 0.1 blurred (without this, 8% of 64-px photo tiles' moved copies were
                           # lost)
COARSE_SHIFT = 2           # whole pixels searched at 16 px (12.5% of the side)
CROP_RANGE = (0.8, 1.0)    # size ratios at which one image may be a crop of the other
MIN_OVERLAP = 0.4          # of the larger image's thumbnail, for a correlation to count
BATCH = 4096               # pairs aligned at once
GATE_FOR = 0.03            # the highest threshold `near_threshold: auto` may choose (calibration.THRESHOLD_RANGE)
PAIR_CHUNK = 16384         # pairs whose thumbnails are gathered at once (16 MB each side)
# Blur matching: a blurred, resized or re-encoded copy of a textured image is as far from its original as another
# image is, unless the sharper of the two is blurred to meet it (Gaussian sigma at 32 px), or both are (noise on
# either side). Measured on 64-px photo tiles: the blur family's 97th-percentile distance went from 0.032 to 0.004.
# Pairs within BLUR_GATE only. The sharper is the one with more of its variance in detail (`_detail`): blurring each
# in turn (three passes with both) found the same copies in 40% more time.
BLUR_SIGMA = 1.0
BLUR_GATE = 0.04
QUARTER_GATE = 0.04        # pairs within this after the half-pixel search are aligned to a quarter pixel too
BLURRED_QUARTER_GATE = 0.015  # the same, blur-matched (at 80k bench images: 6.4 s instead of 9.1 s, the same recall)
# A copy re-lit past black or white is clipped there, so it is no longer a linear function of its original and a
# correlation sees a difference: on 64-px digits the brightness family's 97th-percentile distance was 0.0023, as far
# as distinct digits lie. Pairs within TONE_GATE are also compared with each image's grey levels mapped onto the
# other's (`tone_matched`, monotone): that family's 97th percentile became 0.0000. One way only: the less clipped
# image takes the greys of the more clipped one (the other way cannot undo a clip).
TONE_GATE = 0.01


def thumbnail(gray: Image.Image) -> np.ndarray:
    "The 32×32 uint8 thumbnail that stands for an image (mode L): 1 KB per image, the audit's only per-image state."
    return np.asarray(gray.resize((THUMB, THUMB), Image.BILINEAR), dtype=np.uint8)


def pooled(thumbs: np.ndarray, side: int, block: int = 4096) -> np.ndarray:
    """Thumbnails averaged down to `side` pixels (float32; torch's pooling, many times numpy's strided mean), `block`
    images at a time: uint8 thumbnails made float32 all at once took 4 KB per image at the audit's peak."""
    import torch
    import torch.nn.functional as F

    f = thumbs.shape[-1] // side
    if f <= 1:
        return np.ascontiguousarray(thumbs, dtype=np.float32)
    out = np.empty((len(thumbs), side, side), np.float32)
    for at in range(0, len(thumbs), block):
        x = torch.from_numpy(np.ascontiguousarray(thumbs[at:at + block], dtype=np.float32))[:, None]
        out[at:at + block] = F.avg_pool2d(x, f)[:, 0].numpy()
    return out


def _normalise(flat: np.ndarray) -> np.ndarray:
    "Zero mean, unit norm per row, so brightness and contrast do not matter."
    flat = flat.reshape(len(flat), -1).astype(np.float32)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1)


def _border_fill(thumbs: np.ndarray) -> np.ndarray:
    "Each thumbnail's border median: what fills the edge a move uncovers."
    return np.median(np.concatenate([thumbs[:, 0, :], thumbs[:, -1, :], thumbs[:, :, 0], thumbs[:, :, -1]], axis=1),
                     axis=1).astype(np.float32)


def _moved(thumbs: np.ndarray, dx: int, dy: int, fill: np.ndarray | None = None) -> np.ndarray:
    "Thumbnails moved by (dx, dy) pixels, the uncovered edge filled with each one's border median."
    out = np.empty(thumbs.shape, np.float32)
    out[:] = (_border_fill(thumbs) if fill is None else fill)[:, None, None]
    h, w = thumbs.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = thumbs[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def keys(thumbs: np.ndarray, shifts: list[tuple[int, int]]):
    """What the index compares, per move in `shifts` (even 32-px pixels): the normalised inner 6×6 of the 8-px
    thumbnail of the moved thumbnail (a moved copy differs most at its edges). Moves are made at 16 px, where an even
    32-px move is a whole pixel: the same numbers for a sixteenth of the work. Yields (dx, dy, keys)."""
    fill = _border_fill(thumbs)
    at16 = pooled(thumbs, 16)
    for dx, dy in shifts:
        moved = at16 if (dx, dy) == (0, 0) else _moved(at16, dx // 2, dy // 2, fill)
        yield dx, dy, np.ascontiguousarray(_normalise(pooled(moved, 8)[:, 1:-1, 1:-1]))


class CandidateIndex:
    """A nearest-neighbour index over the 8-px keys of a collection; a query returns its likely copies. Built on one
    thread, so the same collection gives the same index (the audit orders it by pixel hash). `ids`: each row's
    number, ascending (the audit's: its pixel hash), by which ties are broken; `trained`: a coarse quantizer kept
    from an earlier audit (its `trained`), so an audit with a cache searches with the same lists as the last one;
    `homes`: the list each image was stored in then (-1 for a new one), so only new images are assigned (`_add`).

    Every probe's nearest items are a rule, not whatever the library returns: the `m` closest within the gate by
    (squared distance, id). Keys are whole numbers (`KEY_SCALE`), so squared distances are exact in float32 in any
    order of summation, and the library's and numpy's agree bit for bit: an audit can update what it remembers by
    computing only the distances to new images (`stagebook.neighbourhood`) and get what a search from scratch gets."""

    def __init__(self, thumbs: np.ndarray, ids: np.ndarray | None = None, trained: bytes | None = None,
                 whole: np.ndarray | None = None, homes: np.ndarray | None = None):
        import faiss

        self.ids = np.arange(len(thumbs), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        if len(self.ids) > 1 and not (np.diff(self.ids) > 0).all():
            raise ValueError("CandidateIndex: ids must be distinct and ascending (rows break ties in id order)")
        if whole is None:
            whole = whole_keys(thumbs, [(0, 0)])[:, 0]
        self.whole = whole  # int8
        whole = whole.astype(np.float32)
        self.points = whole / KEY_SCALE  # each image's unmoved key, as the index has it: `best_offsets` starts here
        faiss.omp_set_num_threads(1)  # a structure built by one thread is the same every run: reproducible clusters
        if trained is not None:
            self.index = faiss.deserialize_index(np.frombuffer(trained, np.uint8).copy())
        elif len(whole) < EXACT_BELOW:
            self.index = faiss.IndexFlatL2(whole.shape[1])
        else:
            lists = len(whole) // LIST_SIZE
            quantizer = faiss.IndexHNSWFlat(whole.shape[1], HNSW_LINKS)
            self.index = faiss.IndexIVFFlat(quantizer, whole.shape[1], lists)
            self.index.cp.seed, self.index.cp.niter = 0, 8
            sample = np.random.default_rng(0).choice(len(whole), min(len(whole), 40 * lists), replace=False)
            self.index.train(whole[np.sort(sample)])
        self.lists = faiss.extract_index_ivf(self.index) if hasattr(self.index, "nlist") else None
        if self.lists is not None:
            self.lists.nprobe = NPROBE
            faiss.downcast_index(self.lists.quantizer).hnsw.efSearch = max(16, 2 * NPROBE)
        # the trained lists before any image is added: what a later audit needs to search in the same lists
        fresh = trained is None and self.lists is not None
        self.trained = bytes(faiss.serialize_index(self.index)) if fresh else trained
        self.homes = self._add(whole, homes)
        faiss.omp_set_num_threads(cpus.threads())  # searching a fixed index is deterministic in any thread count

    def _add(self, whole: np.ndarray, homes: np.ndarray | None) -> np.ndarray:
        """Add every key, rows 0..n-1 in order, and return the list each went to (`homes`: those already known from
        an earlier audit over the same lists, -1 where not; only the others are assigned, which is what adding them
        would compute, so the lists are the same as after a plain `add`, and the IVF's add of all 320k keys on one
        thread took 2.4 s)."""
        import faiss
        if self.lists is None:
            self.index.add(whole)
            return np.zeros(len(whole), np.int32)
        homes = np.full(len(whole), -1, np.int64) if homes is None else np.asarray(homes, np.int64).copy()
        homes[homes >= self.lists.nlist] = -1  # not a list of these (a damaged cache): assigned again, as -1 is
        todo = np.flatnonzero(homes < 0)
        if len(todo):
            homes[todo] = self.lists.quantizer.assign(whole[todo], 1)[:, 0]
        whole = np.ascontiguousarray(whole, np.float32)
        self.lists.add_core(len(whole), faiss.swig_ptr(whole), None, faiss.swig_ptr(homes))
        return homes.astype(np.int32)

    def assign(self, whole: np.ndarray) -> np.ndarray:
        "The lists each whole-number key probes ((n, NPROBE) list numbers; one list, 0, for an exact index)."
        if self.lists is None:
            return np.zeros((len(whole), 1), np.int32)
        _, lists = self.lists.quantizer.search(whole, NPROBE)
        return lists.astype(np.int32)

    def members(self) -> list[np.ndarray]:
        "Per list, its rows (an exact index is one list of every row)."
        import faiss
        if self.lists is None:
            return [np.arange(len(self), dtype=np.int64)]
        inv = self.lists.invlists
        return [faiss.rev_swig_ptr(inv.get_ids(at), inv.list_size(at)).astype(np.int64).copy()
                if inv.list_size(at) else np.empty(0, np.int64) for at in range(self.lists.nlist)]

    def probe(self, whole: np.ndarray, m: int, lists: np.ndarray, within: float = CANDIDATE_GATE):
        """Per whole-number key, its `m` closest rows (ascending squared distance, ties: smaller id) within `within`
        among the rows of `lists`: (rows (n, m) int32, -1 where none; squared distances (n, m) float32, inf there)."""
        count = len(whole)
        rows, squared = np.full((count, m), -1, np.int32), np.full((count, m), np.inf, np.float32)
        todo, take = np.arange(count), min(m + PROBE_EXTRA, len(self))
        while len(todo) and take:
            dist, found = self._search(whole[todo], take, lists[todo])
            r, s = canonical(found, dist, m, gate_squared(within))
            rows[todo], squared[todo] = r, s
            # Settled unless the library's last hit ties or beats the m-th (then equal distances may be missing)
            unsure = (found[:, -1] >= 0) & np.isfinite(s[:, -1]) & (dist[:, -1] <= s[:, -1])
            if take >= len(self):
                break
            todo, take = todo[unsure], min(4 * take, len(self))
        return rows, squared

    def _search(self, whole: np.ndarray, take: int, lists: np.ndarray):
        "The library's `take` nearest among `lists` (faiss searches preassigned lists on one thread: a slice each)."
        if self.lists is None:
            return self.index.search(whole, take)
        lists = lists.astype(np.int64)
        parts = max(1, min(cpus.threads(), len(whole) // 1024))
        if parts == 1:
            return self.lists.search_preassigned(whole, take, lists, np.zeros(lists.shape, np.float32))
        from concurrent.futures import ThreadPoolExecutor
        edges = np.linspace(0, len(whole), parts + 1).astype(int)
        def one(at):
            import faiss
            faiss.omp_set_num_threads(1)  # this thread's own setting: a team per thread would spin on 2 cores
            part = slice(edges[at], edges[at + 1])
            return self.lists.search_preassigned(whole[part], take, lists[part],
                                                 np.zeros((edges[at + 1] - edges[at], lists.shape[1]), np.float32))

        with ThreadPoolExecutor(parts) as pool:  # faiss lets go of the GIL while it searches
            found = list(pool.map(one, range(parts)))
        return np.concatenate([d for d, _ in found]), np.concatenate([i for _, i in found])

    def tables(self, thumbs: np.ndarray, k: int, shifts: list[tuple[int, int]], moved: np.ndarray | None = None):
        """Every probe's nearest rows (`probe`), probes side by side: (rows (n, M), squared (n, M), lists
        (n, len(shifts), NPROBE), moved (n, len(shifts), 36) int8: the probes' whole-number keys), M = the sum of
        each move's count (`columns`). `moved`: those keys, if they are known (`whole_keys` of `thumbs`)."""
        counts = columns(k, shifts, len(self))
        rows = np.empty((len(thumbs), sum(counts)), np.int32)
        squared = np.empty(rows.shape, np.float32)
        lists = np.zeros((len(thumbs), len(shifts), NPROBE if self.lists is not None else 1), np.int32)
        if moved is None:
            moved = whole_keys(thumbs, shifts)
        starts = np.r_[0, np.cumsum(counts)]
        for at in range(0, len(thumbs), QUERY_CHUNK):
            part = slice(at, at + QUERY_CHUNK)
            for number in range(len(shifts)):
                whole = moved[part, number].astype(np.float32)
                lists[part, number] = self.assign(whole)
                block = slice(starts[number], starts[number + 1])
                rows[part, block], squared[part, block] = self.probe(whole, counts[number], lists[part, number])
        return rows, squared, lists, moved

    def search(self, thumbs: np.ndarray, k: int, within: float = CANDIDATE_GATE,
               shifts: list[tuple[int, int]] = PROBE_SHIFTS) -> np.ndarray:
        """Rows (query, item, dx, dy, distance): the item is among the k nearest of the query (PROBE_NEAREST of each
        moved probe) within 1 - correlation `within` at 8 px; the item looks like the query moved by (dx, dy) 32-px
        pixels. A pair found by several probes keeps the closest; each query keeps its k + PROBE_NEAREST closest."""
        if not len(self) or not len(thumbs):
            return np.empty((0, 5))
        parts = []
        for at in range(0, len(thumbs), QUERY_CHUNK):
            rows, squared, _, _ = self.tables(thumbs[at:at + QUERY_CHUNK], k, shifts)
            rows, squared = _within(rows, squared, within)
            query, item, move, dist = combine(rows, squared, column_moves(k, shifts, len(self)), k)
            moves = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)[move]
            parts.append(np.stack([query + at, item, moves[:, 0], moves[:, 1], dist], axis=1))
        return np.concatenate(parts)

    def self_pairs(self, thumbs: np.ndarray, k: int, shifts: list[tuple[int, int]] = SELF_SHIFTS,
                   tables=None) -> np.ndarray:
        """The candidate pairs of the indexed collection itself (`thumbs`, in the index's order) as unique (i, j),
        i < j, an (N, 2) int64 array in lexicographic order: the pairs of `search`'s rows. `tables`: this
        collection's probe tables (`tables`, or `neighbourhood.update`), if they are already made."""
        rows, squared = tables[:2] if tables is not None else self.tables(thumbs, k, shifts)[:2]
        return pairs_of(rows, squared, column_moves(k, shifts, len(self)), k)

    def __len__(self) -> int:
        return self.index.ntotal


PROBE_EXTRA = 4            # hits asked of the library beyond a probe's m, so the rule (distance, then row) decides ties
KEY_SCALE = 127            # keys are unit vectors times this, rounded: bytes, and every squared distance (at most 36 x
                           # 254^2, below 2^24) a whole number, exact in float32 in any order of summation


def _whole(unit_keys: np.ndarray) -> np.ndarray:
    "Whole-number keys (int8) from unit ones."
    return np.rint(unit_keys * KEY_SCALE).astype(np.int8)


def whole_keys(thumbs: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """(n, len(shifts), 36) int8: the whole-number key of each thumbnail moved by each of `shifts` (`keys`), made a
    chunk at a time (all thumbnails at once in float32 would take 4 KB per image)."""
    out = np.empty((len(thumbs), len(shifts), 36), np.int8)
    for at in range(0, len(thumbs), QUERY_CHUNK):
        for number, (_, _, probe) in enumerate(keys(thumbs[at:at + QUERY_CHUNK], shifts)):
            out[at:at + QUERY_CHUNK, number] = _whole(probe)
    return out


def gate_squared(within: float) -> float:
    "The squared distance of whole-number keys that stands for 1 - correlation `within` (|a - b|^2 = 2 (1 - corr))."
    return 2.0 * KEY_SCALE * KEY_SCALE * within


def columns(k: int, shifts: list[tuple[int, int]], size: int) -> list[int]:
    "How many nearest rows each probe keeps: k unmoved, PROBE_NEAREST moved (at most the collection's size)."
    return [min(k if (dx, dy) == (0, 0) else PROBE_NEAREST, size) for dx, dy in shifts]


def column_moves(k: int, shifts, size: int) -> np.ndarray:
    "The move number (position in `shifts`) of each column of a probe table."
    return np.repeat(np.arange(len(shifts), dtype=np.int16), columns(k, shifts, size))


def canonical(found: np.ndarray, dist: np.ndarray, m: int, gate: float):
    """The `m` closest of each row of library hits (rows `found`, squared `dist`; -1 where none) within squared
    distance `gate`, by (distance, row): (rows int32, squared float32), -1 and inf where fewer. Rows are numbered in
    id order, so the row breaks ties as the id does."""
    ok = (found >= 0) & (dist <= gate)
    order = np.argsort(_packed(np.where(ok, dist, np.inf), np.where(ok, found, 0)), axis=1, kind="stable")[:, :m]
    rows = np.take_along_axis(np.where(ok, found, -1), order, 1).astype(np.int32)
    squared = np.take_along_axis(np.where(ok, dist, np.inf).astype(np.float32), order, 1)
    if rows.shape[1] < m:
        pad = m - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        squared = np.pad(squared, ((0, 0), (0, pad)), constant_values=np.inf)
    return rows, squared


ROW_BITS = 24              # rows below 2^24 (16M images) sort as one number with their whole-number distance


def _packed(squared: np.ndarray, rows: np.ndarray) -> np.ndarray:
    "(squared distance, row) as one int64 that sorts the same: whole-number distances above the row; inf last."
    finite = np.isfinite(squared)
    key = (np.where(finite, squared, 0).astype(np.int64) << ROW_BITS) | rows.astype(np.int64)
    return np.where(finite, key, np.iinfo(np.int64).max)


def _within(rows, squared, within):
    if within >= CANDIDATE_GATE:
        return rows, squared
    far = squared > gate_squared(within)
    return np.where(far, -1, rows), np.where(far, np.inf, squared)


def combine(rows, squared, moves, k: int):
    """Per query (a row of a probe table), its k + PROBE_NEAREST closest items over all moved probes, closest first
    (ties: smaller row), each with the probe that came closest (ties: the earlier in `shifts`): arrays (query, item,
    move number, distance). Made on the (queries × hits) table, one row per query, so every step is one vectorised
    pass: sorting the hits of all queries as one long list took a quarter of the search's time."""
    missing = np.int64(np.iinfo(np.int64).max)
    valid = rows >= 0
    # each item once per query, at its closest probe (ties: the earlier probe, i.e. the earlier column)
    by_item = np.where(valid, (rows.astype(np.int64) << 32) | np.where(valid, squared, 0).astype(np.int64), missing)
    order = np.argsort(by_item, axis=1, kind="stable")
    key, item, dist = (np.take_along_axis(a, order, 1) for a in (by_item, rows, squared))
    move = moves[order]
    again = np.zeros(item.shape, bool)
    again[:, 1:] = (key[:, 1:] >> 32) == (key[:, :-1] >> 32)
    dist = np.where(again | (key == missing), np.inf, dist)
    # then closest first (ties: the smaller row), k + PROBE_NEAREST per query
    order = np.argsort(_packed(dist, np.maximum(item, 0)), axis=1)[:, :k + PROBE_NEAREST]
    item, dist, move = (np.take_along_axis(a, order, 1) for a in (item, dist, move))
    kept = np.isfinite(dist)
    query = np.broadcast_to(np.arange(len(rows))[:, None], item.shape)
    return (query[kept], item[kept].astype(np.int64), move[kept],
            dist[kept].astype(np.float64) / (2.0 * KEY_SCALE * KEY_SCALE))


def pairs_of(rows, squared, moves, k: int) -> np.ndarray:
    "The unique (i, j), i < j, of `combine`'s (query, item) rows, in lexicographic order, a chunk of queries at a time."
    n = len(rows)
    found = [np.empty(0, np.int64)]
    for at in range(0, n, QUERY_CHUNK):
        query, item, _, _ = combine(rows[at:at + QUERY_CHUNK], squared[at:at + QUERY_CHUNK], moves, k)
        query = query + at
        other = query != item
        query, item = query[other], item[other]
        found.append(_distinct(np.minimum(query, item) * n + np.maximum(query, item)))
    pair_keys = np.concatenate(found)
    del found
    pair_keys = _distinct(pair_keys)
    return np.stack([pair_keys // n, pair_keys % n], axis=1)


def _distinct(values: np.ndarray) -> np.ndarray:
    "The distinct values, sorted: `np.unique` by one radix sort (numpy's hashing unique is ten times slower here)."
    values = np.sort(values, kind="stable")
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _correlation(a, b, inside):
    "1 - Pearson correlation of a and b over the `inside` weights (batched torch tensors); two flat images agree."
    import torch

    n = inside.sum(dim=(1, 2)).clamp_min(1e-6)
    ma = (a * inside).sum(dim=(1, 2)) / n
    mb = (b * inside).sum(dim=(1, 2)) / n
    da, db = (a - ma[:, None, None]) * inside, (b - mb[:, None, None]) * inside
    va, vb = (da * da).sum(dim=(1, 2)), (db * db).sum(dim=(1, 2))
    cov = (da * db).sum(dim=(1, 2))
    flat_a, flat_b = va <= 1e-3 * n, vb <= 1e-3 * n
    corr = torch.where(flat_a | flat_b, (flat_a & flat_b).float(), cov / torch.sqrt(va * vb).clamp_min(1e-12))
    enough = n >= MIN_OVERLAP * a.shape[-1] * a.shape[-2]
    return torch.where(enough, 1 - corr, torch.full_like(corr, 2.0))


def _best_alignment(a, b, scale, centre, steps):
    """Smallest distance of b placed in a's frame over the offsets `centre` + each of `steps` (a's pixels).
    a, b: (N, S, S); scale: (N, 2) size of b's pixels in a's; centre: (N, 2). Returns (distance, offset)."""
    import torch
    import torch.nn.functional as F

    count, side = a.shape[0], a.shape[-1]
    c = (side - 1) / 2
    axis = torch.arange(side, dtype=torch.float32)
    best = torch.full((count,), 3.0)
    where = centre.clone()
    for step in steps:
        offset = centre + torch.tensor(step, dtype=torch.float32)
        gx = ((axis[None, :] - c - offset[:, :1]) / scale[:, :1] + c) / (side - 1) * 2 - 1
        gy = ((axis[None, :] - c - offset[:, 1:]) / scale[:, 1:] + c) / (side - 1) * 2 - 1
        grid = torch.stack([gx[:, None, :].expand(count, side, side), gy[:, :, None].expand(count, side, side)], dim=-1)
        placed = F.grid_sample(b[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
        inside = (_eroded(gx.abs() <= 1)[:, None, :] & _eroded(gy.abs() <= 1)[:, :, None]).float()
        dist = _correlation(a, placed, inside)
        better = dist < best
        best = torch.where(better, dist, best)
        where = torch.where(better[:, None], offset, where)
    return best, where


def _best_whole_alignment(a, b, scale, centre, reach: int):
    """`_best_alignment` over the whole-pixel offsets `centre` + (-reach..reach)² (centre: whole pixels), with the
    same numbers for a fraction of the work: b is resampled into a's frame once, on a canvas `reach` pixels wider
    each way, and each offset is a slice of it (a whole-pixel move of the sampling grid moves the samples exactly)."""
    import torch
    import torch.nn.functional as F

    count, side = a.shape[0], a.shape[-1]
    c = (side - 1) / 2
    wide = side + 2 * reach
    axis = torch.arange(-reach, side + reach, dtype=torch.float32)
    gx = ((axis[None, :] - centre[:, :1] - c) / scale[:, :1] + c) / (side - 1) * 2 - 1
    gy = ((axis[None, :] - centre[:, 1:] - c) / scale[:, 1:] + c) / (side - 1) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(count, wide, wide), gy[:, :, None].expand(count, wide, wide)], dim=-1)
    canvas = F.grid_sample(b[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    in_x, in_y = gx.abs() <= 1, gy.abs() <= 1
    best = torch.full((count,), 3.0)
    where = centre.clone()
    for dx, dy in _grid(float(reach), 1.0):
        x0, y0 = reach - int(dx), reach - int(dy)
        placed = canvas[:, y0:y0 + side, x0:x0 + side].contiguous()
        inside = (_eroded(in_x[:, x0:x0 + side])[:, None, :] & _eroded(in_y[:, y0:y0 + side])[:, :, None]).float()
        dist = _correlation(a, placed, inside)
        better = dist < best
        best = torch.where(better, dist, best)
        where = torch.where(better[:, None], centre + torch.tensor((dx, dy), dtype=torch.float32), where)
    return best, where


def _eroded(inside):
    "An overlap (N, side) of booleans less MARGIN pixels (at 32 px; in proportion at other sides) at each end."
    import torch

    margin = max(1, MARGIN * inside.shape[1] // THUMB)
    padded = torch.nn.functional.pad(inside, (1, 1), value=False)
    for _ in range(margin):
        padded[:, 1:-1] = padded[:, 1:-1] & padded[:, :-2] & padded[:, 2:]
    return padded[:, 1:-1]


def _grid(reach: float, step: float) -> list[tuple[float, float]]:
    values = np.arange(-reach, reach + 1e-9, step)
    return [(float(x), float(y)) for y in values for x in values]


def _whole_pixel_search(a, b, centre: np.ndarray, reach: int, margin: int = MARGIN):
    """Same-frame pairs: the best whole-pixel offset of b (a ≈ b moved by it) within `reach` of `centre`, and its
    1 - correlation over the overlap; by slicing, one group of pairs with the same centre at a time (torch tensors)."""
    import torch

    best = torch.full((len(a),), 3.0)
    where = torch.zeros(len(a), 2)
    h, w = a.shape[1:]
    groups, inverse = np.unique(centre.astype(np.int64), axis=0, return_inverse=True)
    for g, (cx, cy) in enumerate(groups.tolist()):
        rows = torch.from_numpy(np.flatnonzero(inverse.ravel() == g))
        ga, gb = a[rows], b[rows]
        for dy in range(cy - reach, cy + reach + 1):
            for dx in range(cx - reach, cx + reach + 1):
                if abs(dx) >= w // 2 or abs(dy) >= h // 2:
                    continue
                m = margin
                wa = ga[:, max(dy, 0) + m:h + min(dy, 0) - m, max(dx, 0) + m:w + min(dx, 0) - m].reshape(len(rows), -1)
                wb = gb[:, max(-dy, 0) + m:h + min(-dy, 0) - m, max(-dx, 0) + m:w + min(-dx, 0) - m].reshape(len(rows), -1)
                wa = wa - wa.mean(dim=1, keepdim=True)
                wb = wb - wb.mean(dim=1, keepdim=True)
                va, vb = (wa * wa).sum(dim=1), (wb * wb).sum(dim=1)
                flat_a, flat_b = va <= 1e-3 * wa.shape[1], vb <= 1e-3 * wa.shape[1]
                corr = torch.where(flat_a | flat_b, (flat_a & flat_b).float(),
                                   (wa * wb).sum(dim=1) / torch.sqrt((va * vb).clamp_min(1e-12)))
                dist = 1 - corr
                better = dist < best[rows]
                best[rows] = torch.where(better, dist, best[rows])
                where[rows[better]] = torch.tensor([float(dx), float(dy)])
    return best, where


def _align_same_frame(raw_a: np.ndarray, raw_b: np.ndarray, gate: float, hint: np.ndarray | None,
                      quarter: float = 0.0) -> np.ndarray:
    """Distance of each pair of same-frame thumbnails (unsmoothed; resized, moved, re-lit, ... copies): a whole-pixel
    search at 16 px, then at 32 px for pairs close there (around `hint`, the pair's best offset at 8 px, or widely
    without one), then, for pairs within `gate`, a half-pixel one around the best (and a quarter-pixel one for those
    within `quarter`). A pair far at 16 px gets a second, blurred look there (`SECOND_CHANCE`). Only the pairs that
    get past 16 px are smoothed at 32 px: about a fifth of them, and smoothing every pair was an eighth of the audit."""
    import torch

    centre = np.zeros((len(raw_a), 2)) if hint is None else hint
    # At 16 px first (a sixteenth of the work): pairs that are far apart there are no copies at any threshold
    small_a, small_b = _smoothed16(raw_a), _smoothed16(raw_b)
    at16, at16_offset = _whole_pixel_search(torch.from_numpy(small_a), torch.from_numpy(small_b), np.round(centre / 2),
                                            2 if hint is None else 1, margin=MARGIN // 2)
    rough, coarse = at16.clone(), torch.zeros(len(raw_a), 2)
    passed = at16 <= PREFILTER
    # A second chance, blurred, at the best whole-pixel offset, for what a half-pixel move may have put past the
    # prefilter (textured copies)
    again = torch.nonzero(~passed & (at16 <= SECOND_CHANCE)).flatten().numpy()
    if len(again):
        blurred, _ = _whole_pixel_search(torch.from_numpy(_blurred(small_a[again], PREFILTER_BLUR)),
                                         torch.from_numpy(_blurred(small_b[again], PREFILTER_BLUR)),
                                         at16_offset[again].numpy(), 0, margin=MARGIN // 2)
        passed[torch.from_numpy(again)] = blurred <= BLURRED_PREFILTER
    wanted = torch.nonzero(passed | (at16 <= gate)).flatten().numpy()  # all that is used at 32 px
    if not len(wanted):
        return rough.numpy()
    a, b = torch.from_numpy(_smoothed(raw_a[wanted])), torch.from_numpy(_smoothed(raw_b[wanted]))
    close = torch.nonzero(passed[wanted]).flatten()  # positions in `wanted`
    if len(close):
        rows = torch.from_numpy(wanted)[close]
        rough[rows], coarse[rows] = _whole_pixel_search(a[close], b[close], centre[rows.numpy()],
                                                        4 if hint is None else 1)
    return _refine(a, b, torch.ones(len(wanted), 2), rough, coarse, gate, wanted, quarter)


def _align_crop(a32: np.ndarray, b32: np.ndarray, scale: np.ndarray, gate: float, quarter: float = 0.0) -> np.ndarray:
    """Distance of each pair where b (smoothed, as a) may be a crop of a, `scale` the size of b's pixels in a's: the
    smaller image may sit anywhere in the room the crop left; search at 16 px, then at 32, then half pixels."""
    import torch

    a, b = torch.from_numpy(a32), torch.from_numpy(b32)
    reach = COARSE_SHIFT + int(np.ceil((1 - scale.min()) * 8))
    ratio = torch.from_numpy(scale.astype(np.float32))
    _, at16 = _best_whole_alignment(torch.from_numpy(pooled(a32, 16)), torch.from_numpy(pooled(b32, 16)), ratio,
                                    torch.zeros(len(a32), 2), reach)
    rough, coarse = _best_whole_alignment(a, b, ratio, 2 * at16, 1)
    return _refine(a, b, ratio, rough, coarse, gate, np.arange(len(a32)), quarter)


def _refine(a, b, ratio, rough, coarse, gate: float, rows: np.ndarray, quarter: float = 0.0) -> np.ndarray:
    """The half-pixel search around `coarse` for the pairs within `gate` after the whole-pixel one. a, b, ratio: the
    thumbnails and scales of the pairs `rows` (of rough's and coarse's); the others keep their rough distance."""
    import torch

    dist = rough.clone()
    near = torch.nonzero(rough[rows] <= gate).flatten()  # positions in rows: only pairs that may be copies
    if len(near):
        at = torch.from_numpy(rows)[near]
        fine, where = _best_alignment(a[near], b[near], ratio[near], coarse[at], _grid(0.5, 0.5))
        closer = torch.nonzero(fine <= quarter).flatten() if quarter else []  # then quarter pixels for these
        if len(closer):
            finer, _ = _best_alignment(a[near[closer]], b[near[closer]], ratio[near[closer]], where[closer],
                                       _grid(0.25, 0.25))
            fine[closer] = torch.minimum(fine[closer], finer)
        dist[at] = torch.minimum(fine, rough[at])
    return dist.numpy()


def _blur_and_pool(side: int = THUMB) -> np.ndarray:
    """The (side/2 x side) matrix M with M X M^T = 64 x `pooled(_smoothed(X), side/2)`: the [1, 2, 1] blur (edge rows
    kept, times 4) followed by the sum of each two rows. All whole numbers."""
    blur = np.zeros((side, side), np.float32)
    for k in range(1, side - 1):
        blur[k, k - 1:k + 2] = (1, 2, 1)
    blur[0, 0] = blur[-1, -1] = 4
    pool = np.zeros((side // 2, side), np.float32)
    for r in range(side // 2):
        pool[r, 2 * r:2 * r + 2] = 1
    return pool @ blur


def _smoothed16(thumbs: np.ndarray) -> np.ndarray:
    """`pooled(_smoothed(thumbs), 16)`, the same numbers, made at 16 px straight from the uint8 thumbnails as
    M X M^T / 64 (`_blur_and_pool`): on whole-number pixels every partial sum is a whole number below 2^24, so
    float32 matrix products are exact in any order, and two small products beat the blur's many passes."""
    import torch

    if thumbs.dtype != np.uint8 or thumbs.shape[-1] != THUMB:
        return pooled(_smoothed(thumbs), 16)
    m = torch.from_numpy(_BLUR_AND_POOL)
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).to(torch.float32)
    return (torch.matmul(torch.matmul(m, x), m.T) * (1 / 64)).numpy()


_BLUR_AND_POOL = _blur_and_pool()


def _smoothed(thumbs: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur each way (float32): pixel noise counts a third as much; structure wider than 2 px stays.
    On uint8 thumbnails the sums are whole numbers (16x the result fits int16), so they are made in torch's int16
    and the result is exact: the same numbers as float arithmetic, in a third of the time (it ran once per pair)."""
    import torch

    if thumbs.dtype != np.uint8:
        return _smoothed_float(thumbs)
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).to(torch.int16)
    rows = x * 4
    rows[:, 1:-1, :] = x[:, :-2, :] + x[:, 2:, :] + 2 * x[:, 1:-1, :]
    out = rows * 4
    out[:, :, 1:-1] = rows[:, :, :-2] + rows[:, :, 2:] + 2 * rows[:, :, 1:-1]
    return (out.to(torch.float32) * (1 / 16)).numpy()


def _smoothed_float(thumbs: np.ndarray) -> np.ndarray:
    "`_smoothed` for thumbnails that are not uint8."
    thumbs = thumbs.astype(np.float32)
    out = thumbs.copy()
    out[:, 1:-1, :] = (thumbs[:, :-2, :] + thumbs[:, 2:, :]) * 0.25 + thumbs[:, 1:-1, :] * 0.5
    tmp = out.copy()
    out[:, :, 1:-1] = (tmp[:, :, :-2] + tmp[:, :, 2:]) * 0.25 + tmp[:, :, 1:-1] * 0.5
    return out


def pair_distances(thumbs_a: np.ndarray, sizes_a: np.ndarray, thumbs_b: np.ndarray, sizes_b: np.ndarray,
                   gate: float = 1.0, hint: np.ndarray | None = None) -> np.ndarray:
    """Verified distance of each pair (row k of a with row k of b): the better of 'the same frame' (resized, moved,
    re-lit, noisy, blurred, re-encoded) and, where the sizes allow, 'the smaller is a crop of the larger', each also
    with the sharper image blurred to meet the other and both blurred (for pairs within `BLUR_GATE`), and with the
    less clipped image's grey levels mapped onto the other's (`tone_matched`, for pairs within `TONE_GATE`). Pairs
    further apart than `gate` after the whole-pixel search keep that rough distance (they are no copies anyway).
    `hint`: per pair, the 32-px offset by which a looks like b moved (`best_offsets`)."""
    import torch

    out = np.empty(len(thumbs_a), dtype=np.float32)
    # Pairs with the same hint are searched around the same offset: batched together, each batch is one or two
    # slicing groups instead of 25 (the search's cost was Python's, per group).
    order = np.arange(len(thumbs_a)) if hint is None else np.lexsort((hint[:, 1], hint[:, 0]))
    with torch.inference_mode():
        torch.set_num_threads(cpus.threads())
        for start in range(0, len(thumbs_a), BATCH):
            part = order[start:start + BATCH]
            out[part] = _aligned_distance(thumbs_a[part], sizes_a[part], thumbs_b[part], sizes_b[part], gate,
                                          None if hint is None else hint[part], QUARTER_GATE)
        # Blur matching for the few close pairs, gathered from all batches (in each batch's few, Python's cost ruled)
        near = order[out[order] <= min(gate, BLUR_GATE)]
        for start in range(0, len(near), BATCH):
            part = near[start:start + BATCH]
            a, b, size_a, size_b = thumbs_a[part], thumbs_b[part], sizes_a[part], sizes_b[part]
            blurred_a, blurred_b = _blurred(a, BLUR_SIGMA), _blurred(b, BLUR_SIGMA)
            a_sharper = (_detail(a, blurred_a) >= _detail(b, blurred_b))[:, None, None]
            for one, other in ((np.where(a_sharper, blurred_a, a), np.where(a_sharper, b, blurred_b)),
                               (blurred_a, blurred_b)):
                matched = _aligned_distance(one.astype(np.float32, copy=False), size_a,
                                            other.astype(np.float32, copy=False), size_b, gate,
                                            None if hint is None else hint[part], BLURRED_QUARTER_GATE)
                out[part] = np.minimum(out[part], matched)
        # Tone matching for the closest: the less clipped image's grey levels mapped onto the more clipped one's
        near = order[out[order] <= min(gate, TONE_GATE)]
        for start in range(0, len(near), BATCH):
            part = near[start:start + BATCH]
            a, b, size_a, size_b = thumbs_a[part], thumbs_b[part], sizes_a[part], sizes_b[part]
            onto_b = (_clipped_share(a) <= _clipped_share(b))[:, None, None]
            toned = tone_matched(np.where(onto_b, a, b), np.where(onto_b, b, a))
            toned_a = np.where(onto_b, toned, a).astype(np.float32, copy=False)
            toned_b = np.where(onto_b, b, toned).astype(np.float32, copy=False)
            matched = _aligned_distance(toned_a, size_a, toned_b, size_b, gate, None if hint is None else hint[part],
                                        BLURRED_QUARTER_GATE)
            out[part] = np.minimum(out[part], matched)
    return out


def _aligned_distance(a, size_a, b, size_b, gate: float, hint, quarter: float = 0.0) -> np.ndarray:
    "One batch of `pair_distances` without blur matching: the same frame, and the crop hypothesis where it applies."
    size_a, size_b = size_a.astype(np.float64), size_b.astype(np.float64)
    dist = _align_same_frame(a, b, gate, hint, quarter)
    swap = (size_b[:, 0] * size_b[:, 1]) > (size_a[:, 0] * size_a[:, 1])  # the larger image gives the frame
    big, small = np.where(swap[:, None], size_b, size_a), np.where(swap[:, None], size_a, size_b)
    ratio = small / np.maximum(big, 1)
    crop = (ratio >= CROP_RANGE[0]).all(axis=1) & (ratio < CROP_RANGE[1]).any(axis=1) & (ratio <= 1).all(axis=1)
    if crop.any():
        rows = np.flatnonzero(crop)
        frame = _smoothed(np.where(swap[rows, None, None], b[rows], a[rows]))
        inner = _smoothed(np.where(swap[rows, None, None], a[rows], b[rows]))
        dist[rows] = np.minimum(dist[rows], _align_crop(frame, inner, ratio[rows], gate, quarter))
    return dist


def _detail(thumbs: np.ndarray, blurred: np.ndarray) -> np.ndarray:
    "Per thumbnail, the share of its variance that blurring (`blurred`: the same, blurred) takes away: how sharp it is."
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    lost = ((flat - blurred.reshape(len(thumbs), -1)) ** 2).mean(axis=1)
    return lost / np.maximum(flat.var(axis=1), 1e-6)


def _clipped_share(thumbs: np.ndarray) -> np.ndarray:
    "Per thumbnail, the share of its pixels at its own darkest or lightest grey: where re-lighting clipped it."
    flat = thumbs.reshape(len(thumbs), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat <= low) | (flat >= high)).mean(axis=1)


def tone_matched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each of `a`'s thumbnails with its grey levels mapped onto the matching thumbnail of `b`'s (float32): pixel k of
    a becomes the mean of b's values at the ranks a's value takes (equal values in a share one), so the map is
    monotone and a's histogram becomes b's. Undoes clipping, gamma and any re-lighting that keeps the order of greys."""
    import torch

    flat_a = torch.from_numpy(np.ascontiguousarray(a, np.float32)).reshape(len(a), -1)
    sorted_a, order = torch.sort(flat_a, dim=1)
    sorted_b, _ = torch.sort(torch.from_numpy(np.ascontiguousarray(b, np.float32)).reshape(len(b), -1), dim=1)
    running = torch.nn.functional.pad(torch.cumsum(sorted_b.double(), dim=1), (1, 0))
    first = torch.searchsorted(sorted_a, sorted_a, right=False)
    after = torch.searchsorted(sorted_a, sorted_a, right=True)
    mean = ((running.gather(1, after) - running.gather(1, first)) / (after - first).double()).float()
    return torch.empty_like(flat_a).scatter_(1, order, mean).reshape(a.shape).numpy()


def _gaussian_matrix(sigma: float, side: int = THUMB) -> np.ndarray:
    "The (side x side) matrix G with G X G^T = X blurred by a Gaussian of `sigma` px (weights renormalised at edges)."
    offsets = np.arange(side)[:, None] - np.arange(side)[None, :]
    g = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= np.ceil(3 * sigma))
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _blurred(thumbs: np.ndarray, sigma: float) -> np.ndarray:
    "Thumbnails blurred by a Gaussian of `sigma` pixels (float32), or unchanged (sigma 0)."
    if not sigma:
        return thumbs
    import torch

    g = torch.from_numpy(_gaussian_matrix(sigma, thumbs.shape[-1]))
    x = torch.from_numpy(np.ascontiguousarray(thumbs, dtype=np.float32))
    return torch.matmul(torch.matmul(g, x), g.T).numpy()


def best_offsets(keys_a: np.ndarray, thumbs_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
                 block: int = 4096) -> np.ndarray:
    """Per pair (image rows_a[k] of the collection whose unmoved keys are `keys_a`, i.e. an index's `points`, and
    thumbs_b[rows_b[k]]), the move (dx, dy) among PROBE_SHIFTS (32-px pixels) by which b, moved, looks most like a at
    8 px: where alignment starts. A function of the two images alone (not of which probe found the pair), so a pair's
    verified distance is the same in every audit of every collection, and an audit can reuse the one it remembers.
    Each b's moved keys are made once, `block` images at a time."""
    out = np.zeros((len(rows_a), 2), np.int8)  # moves are -4..4: a byte each, not 8 (millions of pairs)
    if not len(rows_a):
        return out
    order = np.argsort(rows_b, kind="stable")
    unique_b, starts = np.unique(rows_b[order], return_index=True)
    starts = np.r_[starts, len(order)]
    for at in range(0, len(unique_b), block):
        part = order[starts[at]:starts[min(at + block, len(unique_b))]]
        local = np.searchsorted(unique_b[at:at + block], rows_b[part])
        key_a = keys_a[rows_a[part]]
        best = np.full(len(part), -np.inf, np.float32)
        where = np.zeros((len(part), 2), np.int8)
        for dx, dy, moved in keys(thumbs_b[unique_b[at:at + block]], SHIFTS_BY_SIZE):
            corr = np.einsum("ij,ij->i", key_a, moved[local])
            better = corr > best + 1e-6  # a tie keeps the smaller move
            best[better], where[better] = corr[better], (dx, dy)
        out[part] = where
    return out


def _no_pairs() -> pd.DataFrame:
    return pd.DataFrame({"i": np.empty(0, np.int64), "j": np.empty(0, np.int64), "distance": np.empty(0, np.float32)})


def near_pairs(thumbs: np.ndarray, sizes: np.ndarray, threshold: float, neighbours: int = 8,
               index: CandidateIndex | None = None, memo=None, pairs: np.ndarray | None = None) -> pd.DataFrame:
    """Verified near-copy pairs (i < j, distance <= threshold) within one collection. `memo`
    (`auditcache.PairMemo`): distances remembered from an earlier audit, and where this one's are recorded.
    `pairs`: the candidate pairs (`CandidateIndex.self_pairs`), if they are already known."""
    if len(thumbs) < 2:
        return _no_pairs()
    index = index or CandidateIndex(thumbs)
    pairs = index.self_pairs(thumbs, neighbours + 1) if pairs is None else pairs
    if not len(pairs):
        return _no_pairs()
    i, j = pairs[:, 0], pairs[:, 1]
    gate = coarse_gate(threshold)
    dist = memo.lookup(i, j, gate) if memo is not None else np.full(len(i), np.nan, np.float32)
    todo = np.flatnonzero(np.isnan(dist))
    hint = np.zeros((len(i), 2), np.int8)
    hint[todo] = best_offsets(index.points, thumbs, i[todo], j[todo])  # where alignment starts: the pair's
    todo = todo[np.lexsort((hint[todo, 1], hint[todo, 0]))]  # same offsets together (see pair_distances)
    for start in range(0, len(todo), PAIR_CHUNK):  # the pairs' thumbnails gathered a chunk at a time, not all at once
        part = todo[start:start + PAIR_CHUNK]
        dist[part] = pair_distances(thumbs[i[part]], sizes[i[part]], thumbs[j[part]], sizes[j[part]], gate=gate,
                                    hint=hint[part])
    if memo is not None:
        memo.record(i, j, gate, dist)
    ok = dist <= threshold
    return pd.DataFrame({"i": i[ok], "j": j[ok], "distance": dist[ok]})


def coarse_gate(threshold: float) -> float:
    """How far after the whole-pixel search at 32 px a pair may lie and still be aligned finer: 4x the highest
    threshold the self-test may choose (`GATE_FOR`), whatever this audit's threshold, so a verified distance does not
    depend on the threshold of the day and one remembered from an earlier audit is the one this audit would compute."""
    return max(0.03, 4 * max(threshold, GATE_FOR))


def star_clusters(n: int, pairs: pd.DataFrame, keys: np.ndarray) -> np.ndarray:
    """A cluster number per item, with no chaining: the item with the most verified copies (ties: smallest key) is a
    representative and takes its still-free copies; repeat. Every member is a verified copy of its representative."""
    cluster = np.arange(n)
    if not len(pairs):
        return cluster
    i, j = pairs.i.to_numpy(dtype=np.int64), pairs.j.to_numpy(dtype=np.int64)
    order = np.lexsort((keys[np.r_[i, j]], np.r_[i, j]))
    ends = np.r_[i, j][order]
    others = np.r_[j, i][order]
    starts = np.searchsorted(ends, np.arange(n + 1))
    degree = np.diff(starts)
    free = np.ones(n, bool)
    for item in sorted(np.flatnonzero(degree), key=lambda k: (-degree[k], keys[k])):
        if not free[item]:
            continue
        free[item] = False
        copies = others[starts[item]:starts[item + 1]]
        copies = copies[free[copies]]
        cluster[copies] = item
        free[copies] = False
    return cluster
