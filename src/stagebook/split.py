"""Sticky, group-aware splits: an item's split is a function of a hash of its group key, never of row order.

So re-extracting the data, or adding to it, cannot move an existing item, and items that share a group (declared,
or identical bytes) always land together. Earlier assignments, when given, win over the hash: once test, always test.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from .errors import StagebookError

SPLITS = ("train", "valid", "test")


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


def unit_interval(key: str, seed: int) -> float:
    "A uniform number in [0, 1) that depends only on (`seed`, `key`)."
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(u: float, proportions: dict[str, float]) -> str:
    edge_train = proportions["train"]
    edge_valid = edge_train + proportions["valid"]
    return "train" if u < edge_train else "valid" if u < edge_valid else "test"


def split_assignments(manifest: pd.DataFrame, proportions: dict[str, float], seed: int,
                      previous: pd.DataFrame | None = None) -> pd.DataFrame:
    "The manifest with a `split` column; rows of `previous` (path -> split) keep their split, and so does their group."
    by_group = {g: split_of(unit_interval(g, seed), proportions) for g in manifest.group.unique()}
    if previous is not None and len(previous):
        known = manifest[["path", "group"]].merge(previous[["path", "split"]], on="path")
        by_group.update(dict(zip(known.group, known.split)))
    out = manifest.copy()
    out["split"] = out.group.map(by_group)
    if previous is not None and len(previous):
        out = out.set_index("path")
        kept = previous.set_index("path").split.reindex(out.index).dropna()
        out.loc[kept.index, "split"] = kept
        out = out.reset_index()
    return out
