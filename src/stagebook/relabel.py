"""Reviewed label corrections, read back by the data stage.

Stage 05 writes a relabel queue (items the model confidently contradicts). People fill in `reviewed_label` (the
label they confirm, or the corrected one) and save the rows as `data/relabels.csv`. Stage 01 applies every reviewed
row to the split table: the item keeps its split, only its label changes, and the old label is kept beside it.
Test items are sealed and cannot be relabelled here: that would change the sealed test set behind stage 06's back.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError

REQUIRED = ("path", "reviewed_label")


def read_relabels(path: Path | str) -> pd.DataFrame:
    "The reviewed rows of a relabel file (rows with an empty `reviewed_label` are still waiting for review)."
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=["path", "reviewed_label"])
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise StagebookError(f"{path}: missing column(s) {missing}; start from the relabel queue that stage 05 writes"
                             " (reports/05_error_analysis/tables/relabel_queue.csv) and fill in reviewed_label.")
    reviewed = table[table.reviewed_label.str.strip() != ""].copy()
    reviewed["reviewed_label"] = reviewed.reviewed_label.str.strip()
    duplicated = reviewed.path[reviewed.path.duplicated()]
    if len(duplicated):
        raise StagebookError(f"{path}: {duplicated.iloc[0]} is reviewed more than once; keep one row per item.")
    return reviewed


def apply_relabels(splits: pd.DataFrame, relabels: pd.DataFrame, source: Path | str) -> tuple[pd.DataFrame, int]:
    "Split table with reviewed labels applied (`relabeled_from` keeps the old label), and how many labels changed."
    out = splits.copy()
    if "relabeled_from" not in out:
        out["relabeled_from"] = ""
    if relabels.empty:
        return out, 0
    index = pd.Series(range(len(out)), index=out.path)
    classes = set(out.label.astype(str))
    changed = 0
    for row in relabels.itertuples():
        if row.path not in index:
            raise StagebookError(f"{source}: {row.path} is not in the data; fix the path or delete the row.")
        i = index[row.path]
        if out.split.iat[i] == "test":
            raise StagebookError(f"{source}: {row.path} is a sealed test item; test labels change only by fixing the"
                                 " source data and re-sealing (`stagebook seal`), so delete this row.")
        if row.reviewed_label not in classes:
            raise StagebookError(f"{source}: {row.path} has reviewed_label {row.reviewed_label!r}, not a known class"
                                 f" ({', '.join(sorted(classes))}); fix the spelling.")
        if str(out.label.iat[i]) != row.reviewed_label:
            if not out.relabeled_from.iat[i]:
                out.iat[i, out.columns.get_loc("relabeled_from")] = str(out.label.iat[i])
            out.iat[i, out.columns.get_loc("label")] = row.reviewed_label
            changed += 1
    return out, changed
