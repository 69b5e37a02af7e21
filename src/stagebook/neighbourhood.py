"""Each image's candidate neighbours, remembered between audits and updated for what changed.

The candidate search (`nearcopy.CandidateIndex`) keeps, per image and per move of it, the few closest images within
the gate among the index lists that move probes: a rule (squared distance of whole-number keys, then id), so the
tables are a function of the collection and the index's coarse lists alone. When images are added, an image's closest
can only change by a new image coming closer; when images go, only the probes that held them and were full need a
search again. So an audit that remembers the tables (`auditcache.NeighbourMemo`) computes the distances between the
new images and the probes of their lists, searches only the new images (and the few emptied probes), and gets the
tables a search from scratch over the same lists gets: the same candidate pairs, bit for bit.

The coarse lists are part of what is remembered: an exact index (under `nearcopy.EXACT_BELOW` images) has none, and
is the same whatever the history; above it the lists trained by an earlier audit are kept while the collection stays
within twice or half the size they were trained for (`reusable`), and trained again beyond that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import nearcopy

assert nearcopy.gate_squared(nearcopy.CANDIDATE_GATE) < 2 ** 16  # `_merge` packs distances within the gate in 16 bits


@dataclass
class Tables:
    "Probe tables of a collection (rows of `ids`): `CandidateIndex.tables`' three arrays, and what they depend on."
    ids: np.ndarray          # (n,) int64, ascending
    rows: np.ndarray         # (n, M) int32 rows of ids, -1 where none
    squared: np.ndarray      # (n, M) float32 squared distances of whole-number keys, inf where none
    lists: np.ndarray        # (n, moves, probes) int32 coarse lists each move probed
    moved: np.ndarray        # (n, moves, 36) int8 whole-number keys of each move (`nearcopy.whole_keys`)
    k: int
    trained: bytes | None    # the coarse lists (a serialised trained index) or None for an exact index
    trained_size: int        # how many images the lists were trained on
    homes: np.ndarray | None = None  # (n,) int32 the list each image is stored in (None: not remembered)


def reusable(memo: Tables | None, count: int, k: int) -> bool:
    "Whether remembered tables may be updated for a collection of `count` images (else search from scratch)."
    if memo is None or memo.k != k or memo.rows.shape[1] != sum(nearcopy.columns(k, nearcopy.SELF_SHIFTS, count)):
        return False
    if memo.lists.shape[1:] != (len(nearcopy.SELF_SHIFTS), 1 if memo.trained is None else nearcopy.NPROBE):
        return False
    if memo.trained is None:
        return count < nearcopy.EXACT_BELOW
    return count >= nearcopy.EXACT_BELOW and memo.trained_size / 2 <= count <= 2 * memo.trained_size


def build(index: "nearcopy.CandidateIndex", thumbs: np.ndarray, k: int, trained_size: int) -> Tables:
    "The tables from scratch."
    return Tables(index.ids, *index.tables(thumbs, k, nearcopy.SELF_SHIFTS), k, index.trained, trained_size,
                  index.homes)


def update(index: "nearcopy.CandidateIndex", thumbs: np.ndarray, memo: Tables) -> Tables:
    """The tables of `index`'s collection (`thumbs`, in its order) made from `memo`, the tables of an earlier
    collection searched with the same coarse lists: exactly what `build` gives. `memo`'s tables are consumed: each
    is let go of once it is copied, so the remembered and the new tables are not held whole at once (1 KB an image)."""
    shifts, k, n = nearcopy.SELF_SHIFTS, memo.k, len(index)
    ids = index.ids
    at = np.clip(np.searchsorted(ids, memo.ids), 0, max(n - 1, 0))
    kept = (ids[at] == memo.ids) if n else np.zeros(len(memo.ids), bool)
    now_of_old = np.where(kept, at, -1)            # the current row of each remembered image, -1 if gone
    old_now = now_of_old[kept]                     # current rows of the remembered images still here (ascending)
    is_new = np.ones(n, bool)
    is_new[old_now] = False
    counts = nearcopy.columns(k, shifts, n)
    starts = np.r_[0, np.cumsum(counts)]
    # The remembered arrays as they are when nothing went (no copies: at 320k images they are a few hundred MB)
    take = (lambda a: a) if kept.all() else (lambda a: a[kept])
    remembered = take(memo.rows)
    rows = np.full((n, starts[-1]), -1, np.int32)
    mapped = now_of_old.astype(np.int32)[np.maximum(remembered, 0)]
    mapped[remembered < 0] = -1
    lost = (remembered >= 0) & (mapped < 0)
    rows[old_now] = mapped
    full = np.stack([(remembered[:, starts[at]:starts[at + 1]] >= 0).all(axis=1) for at in range(len(shifts))], 1)
    del mapped, remembered
    memo.rows = None
    squared = np.full(rows.shape, np.inf, np.float32)
    squared[old_now] = np.where(lost, np.inf, take(memo.squared))
    memo.squared = None
    lists = np.zeros((n, len(shifts), memo.lists.shape[2]), np.int32)
    lists[old_now] = take(memo.lists)
    memo.lists = None
    moved = np.empty((n, len(shifts), 36), np.int8)
    moved[old_now] = take(memo.moved)
    memo.moved = None
    # A new image matters to a full probe only if it comes as close as the probe's m-th; to another, if within the gate
    gate = nearcopy.gate_squared(nearcopy.CANDIDATE_GATE)
    limit = np.full((len(old_now), len(shifts)), gate, np.float32)
    for number in range(len(shifts)):
        limit[full[:, number], number] = squared[old_now[full[:, number]], starts[number + 1] - 1]
    members = index.members()
    fresh = [m[is_new[m]] for m in members]        # per coarse list, its new images
    # every remembered probe (an image moved one way) against the new images of the lists it visits, all moves at once
    slot, item, dist = _closer_new(moved, old_now, lists, index, fresh, limit)
    slot_query, slot_move = np.divmod(slot, len(shifts))
    for number in range(len(shifts)):
        block = slice(starts[number], starts[number + 1])
        m, was_full, lost_here = counts[number], full[:, number], lost[:, block].any(axis=1)
        dirty = np.flatnonzero(was_full & lost_here)  # positions among the remembered
        mine = slot_move == number
        query = slot_query[mine]
        holed = np.flatnonzero(lost_here & ~was_full)  # complete still, but with a gap: close it
        if len(query) or len(holed):
            merged_q = np.union1d(query, holed)
            current_r, current_s = rows[old_now[merged_q], block], squared[old_now[merged_q], block]
            r, s = _merge(current_r, current_s, np.searchsorted(merged_q, query), item[mine], dist[mine], m)
            rows[old_now[merged_q], block], squared[old_now[merged_q], block] = r, s
        if len(dirty):
            r, s = index.probe(moved[old_now[dirty], number].astype(np.float32), m, lists[old_now[dirty], number])
            rows[old_now[dirty], block], squared[old_now[dirty], block] = r, s
    new_rows = np.flatnonzero(is_new)
    if len(new_rows):
        rows[new_rows], squared[new_rows], lists[new_rows], moved[new_rows] = index.tables(thumbs[new_rows], k, shifts)
    return Tables(ids, rows, squared, lists, moved, k, memo.trained, memo.trained_size, index.homes)


def _closer_new(moved: np.ndarray, old_now: np.ndarray, lists: np.ndarray, index, fresh: list[np.ndarray],
                limit: np.ndarray):
    """(probe slot, new row, squared distance) of every new image in a list a remembered probe visits that comes
    within the probe's `limit` (slot = position in `old_now` x moves + move), list by list (a few thousand probes
    against a few new images each), with whole-number keys: exact."""
    moves = moved.shape[1]
    visits = lists[old_now]                               # (remembered, moves, probes)
    flat = visits.reshape(-1)
    if len(fresh) < 1 << 16:  # list numbers in 16 bits: numpy's stable sort is then a radix sort (the same order)
        flat = flat.astype(np.uint16)
    owner = np.repeat(np.arange(len(old_now) * moves, dtype=np.int64), visits.shape[2])
    del visits
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(len(fresh) + 1))
    del flat
    found_q, found_r, found_d = [], [], []
    for number, new in enumerate(fresh):
        if not len(new) or bounds[number] == bounds[number + 1]:
            continue
        slots = owner[order[bounds[number]:bounds[number + 1]]]
        position, move = np.divmod(slots, moves)
        mine, keys = moved[old_now[position], move].astype(np.float32), index.whole[new].astype(np.float32)
        dist = (np.einsum("ij,ij->i", mine, mine)[:, None] + np.einsum("ij,ij->i", keys, keys)[None, :]
                - 2 * (mine @ keys.T))
        q, r = np.nonzero(dist <= limit[position, move][:, None])
        found_q.append(slots[q])
        found_r.append(new[r])
        found_d.append(dist[q, r])
    if not found_q:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_d).astype(np.float32)


def _merge(rows, squared, probe, item, dist, m: int):
    "Each probe's m closest of its remembered rows and its new candidates (`probe` numbers rows), by (distance, row)."
    count = len(rows)
    have = rows >= 0
    p = np.r_[np.broadcast_to(np.arange(count)[:, None], rows.shape)[have], probe]
    r = np.r_[rows[have].astype(np.int64), item]
    d = np.r_[squared[have], dist].astype(np.float32)
    # one int64 key (probe, distance, row) where it fits: distances within the gate are below 2^16 (`SQUARED_BITS`)
    fits = count < 1 << (63 - 16 - nearcopy.ROW_BITS) and (not len(r) or r.max() < 1 << nearcopy.ROW_BITS)
    order = np.argsort((p << (16 + nearcopy.ROW_BITS)) | nearcopy._packed(d, r)) if fits else np.lexsort((r, d, p))
    p, r, d = p[order], r[order], d[order]
    first = np.searchsorted(p, np.arange(count))
    rank = np.arange(len(p)) - first[p]
    keep = rank < m
    out_r, out_s = np.full((count, m), -1, np.int32), np.full((count, m), np.inf, np.float32)
    out_r[p[keep], rank[keep]] = r[keep]
    out_s[p[keep], rank[keep]] = d[keep]
    return out_r, out_s
