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
    out.loc[out.split.isna(), "split"] = _place_new_units(out, proportions, seed)
    if not has_previous:
        return out
    gone = previous[pd.Index(out.path).get_indexer(previous.path) < 0].copy()  # (Series.isin is slow on Arrow strings)
    if len(gone):
        gone["status"] = "missing"
        out = pd.concat([out, gone[[c for c in gone.columns if c in out.columns]]], ignore_index=True)
    return out.sort_values("path", ignore_index=True)


def _place_new_units(out: pd.DataFrame, proportions: dict[str, float], seed: int) -> pd.Series:
    "Splits for the rows not yet placed: per class, units in seeded-hash order, each to the split most in deficit."
    usable = (out.status == "ok").to_numpy() if "status" in out.columns else np.ones(len(out), bool)
    label = out.label.astype(str).to_numpy()
    placed = out.split.notna().to_numpy()
    counts: dict[str, list[int]] = {}  # class -> usable items already placed per split
    for (cls, split), n in pd.Series(1, index=pd.MultiIndex.from_arrays(
            [label[placed & usable], out.split.to_numpy()[placed & usable]])).groupby(level=[0, 1]).size().items():
        counts.setdefault(cls, [0, 0, 0])[SPLITS.index(split)] = int(n)
    rows = np.flatnonzero(~placed)
    if not len(rows):
        return pd.Series(dtype=object)
    code, keys = pd.factorize(out.unit.to_numpy()[rows])
    label_code, classes = pd.factorize(label[rows], sort=True)
    size = np.bincount(code, weights=usable[rows], minlength=len(keys)).astype(np.int64)
    unit_label = np.full(len(keys), np.iinfo(np.int64).max)
    np.minimum.at(unit_label, code, label_code)
    mixed = np.zeros(len(keys), bool)
    mixed[code[label_code != unit_label[code]]] = True
    if mixed.any():  # a unit whose items carry several labels takes its most common one, ties to the smallest
        sub = pd.DataFrame({"unit": code, "label": label_code})[mixed[code]]
        top = (sub.groupby(["unit", "label"]).size().rename("n").reset_index()
               .sort_values(["unit", "n", "label"], ascending=[True, False, True]).drop_duplicates("unit"))
        unit_label[top.unit.to_numpy()] = top.label.to_numpy()
    order = unit_order(np.asarray(keys, dtype=object), seed)
    units = pd.DataFrame({"label": np.asarray(classes, dtype=object)[unit_label], "size": size, "order": order}
                         ).sort_values(["label", "order"])
    targets = [proportions[s] for s in SPLITS]
    chosen = np.empty(len(keys), dtype=np.int8)
    t0, t1, t2 = targets
    for cls, block in units.groupby("label", sort=True):
        h0, h1, h2 = counts.get(cls, [0, 0, 0])
        picks = []
        for n in block["size"].to_numpy().tolist():  # the split furthest below its share takes the unit
            total = h0 + h1 + h2 + (n if n > 0 else 1)
            d0, d1, d2 = t0 * total - h0, t1 * total - h1, t2 * total - h2
            if d0 >= d1 and d0 >= d2:
                h0 += n
                picks.append(0)
            elif d1 >= d2:
                h1 += n
                picks.append(1)
            else:
                h2 += n
                picks.append(2)
        chosen[block.index.to_numpy()] = picks
    return pd.Series(np.asarray(SPLITS, dtype=object)[chosen[code]], index=out.index[rows])


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
