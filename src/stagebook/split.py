"""Sticky, group-aware, class-balanced splits, decided by hashes of unit keys, never by row order.

A unit is what must stay together: items joined by a declared `group` or by a duplicate `cluster` (exact, same
pixels or near). Its key is its smallest member key (the group, else the content hash). Units are placed class by
class in the order of a seeded hash of their key, each into the split furthest below its target share, so the same
data always gives the same split, whatever order it is read in, and every class meets the proportions within one
unit (pure per-item hashing misses them by a few points on a few thousand items).

Earlier assignments always win: an item once placed keeps its split, and new members of a unit that already has
placed items join the most protected of them (test, then valid), so a near-copy of a test image never lands in
training. New units fill each class's shortfall. Once test, always test.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StagebookError
from .project import find_root, settings

SPLITS = ("train", "valid", "test")
HARVEST_SOURCE = "harvest"  # items confirmed from the model's own predictions (stagebook.harvest): never test
HARVEST_NEAR_TEST = "excluded: harvested near copy of a test item"
PROTECTION = {"train": 0, "valid": 1, "test": 2}  # = SPLITS order: a larger index is the more protected split


def check_proportions(proportions: dict, where: str) -> dict[str, float]:
    "Proportions for train/valid/test, each in [0, 1], summing to 1."
    if set(proportions) != set(SPLITS):
        raise StagebookError(f"{where}: split proportions need exactly the keys {list(SPLITS)}, got {sorted(proportions)}.")
    try:
        values = {k: float(proportions[k]) for k in SPLITS}
    except (TypeError, ValueError):
        raise StagebookError(f"{where}: split proportions must be numbers, got {proportions}.") from None
    if any(not 0 <= v <= 1 for v in values.values()) or abs(sum(values.values()) - 1) > 1e-6:
        raise StagebookError(f"{where}: split proportions {values} must each lie in [0, 1] and sum to 1.")
    return values


def split_units(items: pd.DataFrame) -> pd.Series:
    """The key of the unit each row belongs to: rows sharing a declared group, a duplicate cluster or a chain of
    verified near-copy pairs (`near_unit`) share a unit."""
    from .audit import same_value_edges, connected_clusters

    member = _member_keys(items)
    edges = [same_value_edges(items[c].fillna("").astype(str)) for c in ("group", "cluster", "near_unit")
             if c in items.columns]
    components = connected_clusters(len(items), edges)
    rank, keys = pd.factorize(member, sort=True)  # integer ranks: a group-wise min over ints, not strings
    smallest = pd.Series(rank).groupby(components).transform("min").to_numpy()
    return pd.Series(np.asarray(keys)[smallest], index=items.index)


def _member_keys(items: pd.DataFrame) -> pd.Series:
    group = items["group"].fillna("").astype(str) if "group" in items.columns else pd.Series("", index=items.index)
    own = ("sha256:" + items["sha256"].astype(str)) if "sha256" in items.columns else ("path:" + items["path"].astype(str))
    return pd.Series(np.where(group != "", "group:" + group, own), index=items.index)


def split_assignments(items: pd.DataFrame, proportions: dict[str, float], seed: int,
                      previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """`items` with `unit` and `split` columns. Rows of `previous` keep their split; rows of `previous` that are no
    longer in `items` are kept with status 'missing', so a returning item returns to its split."""
    out = items.copy().reset_index(drop=True)
    out["unit"] = split_units(out)
    out["split"] = None
    has_previous = previous is not None and len(previous) > 0
    if has_previous:
        placed = previous.drop_duplicates("path").set_index("path").split
        old = pd.Categorical(placed.reindex(out.path).to_numpy(), categories=SPLITS).codes  # -1: not placed
        unit_code = pd.factorize(out.unit)[0]
        level = pd.Series(old).groupby(unit_code).transform("max").to_numpy()  # SPLITS is ordered by protection
        chosen = np.where(old >= 0, old, level)
        out["split"] = pd.Series(np.asarray(SPLITS, dtype=object)[np.maximum(chosen, 0)]).where(chosen >= 0, None)
    new = out.split.isna().to_numpy()
    out.loc[new, "split"] = _place_new_units(out, proportions, seed)
    _keep_harvest_out_of_test(out, new, proportions, seed)
    if not has_previous:
        return out
    gone = previous[pd.Index(out.path).get_indexer(previous.path) < 0].copy()  # (Series.isin is slow on Arrow strings)
    if len(gone):
        gone["status"] = "missing"
        out = pd.concat([out, gone[[c for c in gone.columns if c in out.columns]]], ignore_index=True)
    return out.sort_values("path", ignore_index=True)


def _keep_harvest_out_of_test(out: pd.DataFrame, new: np.ndarray, proportions: dict[str, float], seed: int) -> None:
    """Harvested items were labelled by the model (and confirmed by a person): the sealed test must not grade the
    model on its own answers. A new unit holding one goes to train or valid (in their proportion, by seeded hash);
    a harvested near copy of an item already in test is excluded from the data (its status says why)."""
    if "source" not in out.columns:
        return
    harvested = (out.source.astype(str) == HARVEST_SOURCE).to_numpy()
    if not harvested.any():
        return
    in_test = (out.split == "test").to_numpy()
    units = out.unit.to_numpy()
    barred = pd.Index(pd.unique(units[harvested & in_test]))
    if not len(barred):
        return
    in_barred = barred.get_indexer(units) >= 0
    old_test_units = pd.Index(pd.unique(units[in_barred & ~new]))  # units placed in test before: sticky
    sticky = old_test_units.get_indexer(units) >= 0
    exclude = in_barred & sticky & harvested
    if exclude.any() and "status" in out.columns:
        out.loc[exclude, "status"] = HARVEST_NEAR_TEST
    movable = in_barred & ~sticky
    if movable.any():
        share_valid = proportions["valid"] / max(proportions["train"] + proportions["valid"], 1e-12)
        keys = np.asarray(units[movable], dtype=object)
        draw = (unit_order(keys, seed) % np.uint64(10_000)).astype(float) / 10_000
        out.loc[movable, "split"] = np.where(draw < share_valid, "valid", "train")


def _place_new_units(out: pd.DataFrame, proportions: dict[str, float], seed: int) -> pd.Series:
    """Splits for the rows not yet placed. Units are whole (a group may hold several classes); each counts toward
    every class it holds. Largest first (ties in seeded-hash order), each unit goes to the split whose share of its
    classes would stay furthest below target, then single moves that bring every class and the total closer to
    the targets are made until none is left; single items then fill each class's remaining need. Placed items are
    counted, never moved."""
    usable = (out.status == "ok").to_numpy() if "status" in out.columns else np.ones(len(out), bool)
    label = out.label.astype(str).to_numpy()
    placed = out.split.notna().to_numpy()
    rows = np.flatnonzero(~placed)
    if not len(rows):
        return pd.Series(dtype=object)
    class_code, classes = pd.factorize(label, sort=True)
    split_code = pd.Categorical(out.split.to_numpy(), categories=SPLITS).codes
    held = np.zeros((len(classes), 3))  # usable items already placed, per class and split
    done = placed & usable
    np.add.at(held, (class_code[done], split_code[done]), 1)
    code, keys = pd.factorize(out.unit.to_numpy()[rows])
    new_usable = usable[rows]
    members = (pd.DataFrame({"u": code[new_usable], "c": class_code[rows][new_usable]})
               .value_counts().reset_index(name="n").sort_values(["u", "c"]))
    per_unit: list[list] = [[] for _ in range(len(keys))]  # per unit: (class, usable items of it)
    for u, c, n in zip(members.u.tolist(), members.c.tolist(), members.n.tolist()):
        per_unit[u].append((c, n))
    size = np.array([sum(n for _, n in part) for part in per_unit], dtype=np.int64)
    total_c = held.sum(axis=1) + np.bincount(members.c, weights=members.n, minlength=len(classes))
    target = np.array([proportions[s] for s in SPLITS], dtype=float)
    splits = [k for k in range(3) if target[k] > 0]
    hashed = unit_order(np.asarray(keys, dtype=object), seed)
    lone = np.array([len(part) == 1 and part[0][1] == 1 for part in per_unit])  # one usable item: placed in bulk
    order = np.lexsort((hashed, -size))
    order = order[~lone[order]]
    held_all, total = held.sum(axis=0), float(total_c.sum())
    chosen = np.zeros(len(keys), dtype=np.int8)
    for u in order.tolist():
        part, n = per_unit[u], int(size[u])
        best, best_key = splits[0], None
        for k in splits:  # the share each split would then hold of its target, for this unit's classes and overall
            fill = sum(m * (held[c, k] + m) / (target[k] * total_c[c]) for c, m in part) / n if n else 0.0
            key = (round(fill, 12), round((held_all[k] + n) / (target[k] * total), 12), (int(hashed[u]) + k) % 3)
            if best_key is None or key < best_key:
                best, best_key = k, key
        chosen[u] = best
        for c, m in part:
            held[c, best] += m
        held_all[best] += n
    _improve(chosen, per_unit, size, held, held_all, total_c, total, target, splits, order)
    _place_lone_items(chosen, np.flatnonzero(lone), per_unit, hashed, held, total_c, target)
    # classes still off target (few items, big groups): moves among all their new units, single items included
    off = np.flatnonzero(100 * np.abs(held / np.maximum(total_c, 1)[:, None] - target).max(axis=1) > TOLERANCE_POINTS)
    if len(off):
        off_set = set(off.tolist())
        touched = np.array([any(c in off_set for c, _ in per_unit[u]) for u in order_all], dtype=bool) \
            if (order_all := np.lexsort((hashed, -size))).size else np.zeros(0, bool)
        _improve(chosen, per_unit, size, held, held.sum(axis=0), total_c, total, target, splits, order_all[touched])
    return pd.Series(np.asarray(SPLITS, dtype=object)[chosen[code]], index=out.index[rows])


def _place_lone_items(chosen, lone, per_unit, hashed, held, total_c, target) -> None:
    """Single items fill what each class still lacks: per class, the counts each split needs (largest remainder),
    handed out in seeded-hash order, so which items land in test is as random as the seed."""
    if not len(lone):
        return
    cls = np.array([per_unit[u][0][0] for u in lone])
    count = np.bincount(cls, minlength=len(total_c))
    need = np.clip(target[None, :] * total_c[:, None] - held, 0, None)
    need[:, target == 0] = 0
    share = need * (count / np.maximum(need.sum(axis=1), 1e-12))[:, None]
    alloc = np.floor(share).astype(np.int64)
    left = count - alloc.sum(axis=1)
    for c in np.flatnonzero(left > 0):  # the largest fractional parts get the items still to place
        alloc[c, np.argsort(-(share[c] - alloc[c]), kind="stable")[:left[c]]] += 1
    np.add.at(held, (np.repeat(np.arange(len(count)), 3), np.tile(np.arange(3), len(count))), alloc.ravel())
    ranked = pd.DataFrame({"u": lone, "c": cls, "h": hashed[lone]}).sort_values(["c", "h"], kind="stable")
    rank = ranked.groupby("c").cumcount().to_numpy()
    bounds = np.cumsum(alloc, axis=1)[ranked.c.to_numpy()]  # per row: the cumulative counts of its class
    chosen[ranked.u.to_numpy()] = (rank[:, None] >= bounds).sum(axis=1).astype(np.int8)


def _improve(chosen, per_unit, size, held, held_all, total_c, total, target, splits, order, passes: int = 4) -> None:
    """Move single units while that lowers the summed squared deviation from the targets (every class, and the
    total): the greedy pass places big groups well, this evens out what is left."""
    def delta(part, n, a, b) -> float:
        change = 0.0
        for c, m in part:
            for k, d in ((a, -m), (b, m)):
                before = held[c, k] / total_c[c] - target[k]
                change += (before + d / total_c[c]) ** 2 - before ** 2
        for k, d in ((a, -n), (b, n)):
            before = held_all[k] / total - target[k]
            change += (before + d / total) ** 2 - before ** 2
        return change

    for _ in range(passes):
        moved = False
        for u in order.tolist():
            part, n, a = per_unit[u], int(size[u]), int(chosen[u])
            if not n:
                continue
            gains = [(delta(part, n, a, b), b) for b in splits if b != a]
            gain, b = min(gains) if gains else (0.0, a)
            if gain < -1e-12:
                chosen[u] = b
                for c, m in part:
                    held[c, a] -= m
                    held[c, b] += m
                held_all[a] -= n
                held_all[b] += n
                moved = True
        if not moved:
            break


def unit_order(keys: np.ndarray, seed: int) -> np.ndarray:
    "A seeded, order-free 64-bit hash per key (SipHash via pandas, keyed by the seed): the order units are placed in."
    hash_key = hashlib.sha256(f"stagebook-split:{seed}".encode()).hexdigest()[:16]
    return pd.util.hash_array(keys, hash_key=hash_key, categorize=False)


def straddling_clusters(splits: pd.DataFrame) -> int:
    "Duplicate clusters (or declared groups) with usable members in more than one split: leakage. Should be 0."
    usable = splits[splits.status == "ok"]
    count = 0
    for column in ("cluster", "group"):
        if column in usable.columns:
            keyed = usable[usable[column].fillna("").astype(str) != ""]
            count += int((keyed.groupby(column).split.nunique() > 1).sum())
    return count


def cross_split_pairs(splits: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """Verified near-copy pairs (columns path_a, path_b, distance) whose usable items sit in different splits.
    Clusters do not chain, so a copy of a copy can land in another cluster; this lists every such pair."""
    usable = splits[splits.status == "ok"].drop_duplicates("path").set_index("path").split
    a, b = usable.reindex(near.path_a).to_numpy(), usable.reindex(near.path_b).to_numpy()
    apart = pd.notna(a) & pd.notna(b) & (a != b)
    out = near[apart].assign(split_a=a[apart], split_b=b[apart])
    return out[["path_a", "split_a", "path_b", "split_b", "distance"]].reset_index(drop=True)


def class_balance(splits: pd.DataFrame, proportions: dict[str, float]) -> pd.DataFrame:
    "Per class: share of usable items in each split, and the largest deviation from the target, in points."
    usable = splits[splits.status == "ok"]
    shares = pd.crosstab(usable.label, usable.split, normalize="index").reindex(columns=list(SPLITS), fill_value=0.0)
    shares["max_deviation_points"] = 100 * (shares[list(SPLITS)] - pd.Series(proportions)).abs().max(axis=1)
    return shares.reset_index()


TOLERANCE_POINTS = 2.0  # each class and the total within this many points of every split's target share


def _closest_share(sizes: list[int], total: int, share: float) -> float:
    "Smallest |k/total - share| over the sums k that some subset of `sizes` adds up to (a bitset of reachable sums)."
    reachable = 1
    for n in sizes:
        reachable |= reachable << int(n)
    bits = bin(reachable)[:1:-1]  # bit k set: k is reachable
    sums = np.flatnonzero(np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1"))
    return float(np.abs(sums / total - share).min())


def _best_whole_items(total: int, proportions: dict[str, float]) -> float:
    "Smallest largest-deviation (as a share) of any split of `total` single items into train/valid/test counts."
    if total > 2000:  # one item is under 0.05 points of such a class
        return 0.0
    t = np.array([proportions[k] for k in SPLITS])
    a = np.arange(total + 1)
    valid, test = np.meshgrid(a, a, indexing="ij")
    train = total - valid - test
    dev = np.maximum.reduce([np.abs(train / total - t[0]), np.abs(valid / total - t[1]), np.abs(test / total - t[2])])
    return float(dev[train >= 0].min())


def _best_possible(sizes: list[int], proportions: dict[str, float]) -> float:
    "A lower bound, in points, on the largest deviation any split of these indivisible units can reach."
    total = sum(sizes)
    per_split = max(_closest_share(sizes, total, proportions[k]) for k in SPLITS)
    return 100 * max(per_split, _best_whole_items(total, proportions))


def balance_shortfalls(splits: pd.DataFrame, proportions: dict[str, float],
                       tolerance: float = TOLERANCE_POINTS) -> pd.DataFrame:
    """The classes (and `(all)`, the total) that miss some split's target share by more than `tolerance` points, with
    a lower bound on what any split of their units could reach: a unit (group, duplicate cluster, near-copy chain)
    is indivisible, so a class of few items or one large group cannot land closer. Empty when all are within."""
    columns = ["class", "points_off", "best_possible", "units", "largest_unit", "items"]
    usable = splits[splits.status == "ok"]
    if usable.empty:
        return pd.DataFrame(columns=columns)
    unit = usable["unit"] if "unit" in usable.columns else usable["path"]
    rows = []
    shares = usable.split.value_counts(normalize=True).reindex(list(SPLITS), fill_value=0.0)
    overall = 100 * float((shares - pd.Series(proportions)).abs().max())
    if overall > tolerance:
        sizes = usable.assign(_u=unit).groupby("_u").size().tolist()
        rows.append(("(all)", overall, _best_possible(sizes, proportions), len(sizes), max(sizes), sum(sizes)))
    balance = class_balance(splits, proportions).set_index("label")
    per_unit = usable.assign(_u=unit).groupby(["label", "_u"]).size()
    for cls, row in balance[balance.max_deviation_points > tolerance].iterrows():
        sizes = per_unit.loc[cls].tolist()
        rows.append((str(cls), row.max_deviation_points, _best_possible(sizes, proportions), len(sizes), max(sizes),
                     sum(sizes)))
    return (pd.DataFrame(rows, columns=columns).sort_values("points_off", ascending=False, kind="stable")
            .round({"points_off": 1, "best_possible": 1}).reset_index(drop=True))


def shortfall_sentence(shortfalls: pd.DataFrame, tolerance: float = TOLERANCE_POINTS) -> str:
    "One line for the terminal and the data document: which classes miss the targets, and whether their units allow better."
    if shortfalls.empty:
        return f"every class is within {tolerance:g} points of the target split"
    worst = shortfalls.iloc[0]
    bound = int((shortfalls.points_off <= shortfalls.best_possible + 0.05).sum())
    return (f"{len(shortfalls)} class(es) miss the target split by more than {tolerance:g} points (worst: {worst['class']},"
            f" {worst.points_off:.1f} points, where no split of its {worst.units} unit(s) gets closer than"
            f" {worst.best_possible:.1f}); as close as their units allow: {bound} of {len(shortfalls)}")


def check_policy(policy_file: Path, proportions: dict, seed: int, allow_change: bool, where: str) -> bool:
    """Refuse a silent change of proportions or seed for an existing split; True when a change was allowed.

    Even an allowed change moves no placed item: it applies to new items only (once test, always test)."""
    if not policy_file.is_file():
        return False
    before = json.loads(policy_file.read_text())
    now = {"proportions": proportions, "seed": seed}
    if before == now:
        return False
    if not allow_change:
        raise StagebookError(f"{where}: split settings changed from {before} to {now}, but {policy_file.name} says the"
                             " existing split used the old ones; set allow_split_change: true to apply the new ones to"
                             " new items only (no placed item ever moves), or restore the old values.")
    return True


def load_splits(root: Path | None = None, usable_only: bool = True) -> pd.DataFrame:
    "The split manifest as text columns: usable rows only, or every row (quarantined and missing ones too)."
    root = root or find_root()
    path = root / settings(root)["splits_file"]
    if not path.is_file():
        raise StagebookError(f"{path}: no split manifest yet; run stage 01 first (`stagebook run 01`).")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table[table.status == "ok"] if usable_only else table
