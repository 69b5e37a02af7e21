"""The literature notes: one row per reported result, checked so that a typo never reaches the deliverable.

Columns: citation, approach, dataset, metric, value (a number), compute (what it took to train), feasibility (can we
do it here?), comments (the team's view). Optional: year, url, checked (yes/no: has someone verified the figure?).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError

REQUIRED = ("citation", "approach", "dataset", "metric", "value", "compute", "feasibility", "comments")
BOUNDED = {"accuracy", "f1", "precision", "recall", "auc", "top1", "top5", "map"}  # metrics that live in [0, 1]


def load_literature(path: Path | str, allow_empty: bool = False) -> pd.DataFrame:
    """The validated notes; every problem is a one-line error naming the file, the row and the fix. `allow_empty`:
    a header with no rows yet (a new project) gives an empty table instead of an error."""
    path = Path(path)
    if not path.is_file():
        raise StagebookError(f"{path}: literature file missing; create it with the header {','.join(REQUIRED)}.")
    try:
        notes = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StagebookError(f"{path}: empty file; start it with the header {','.join(REQUIRED)}.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise StagebookError(f"{path}: not a readable CSV ({str(err).splitlines()[0]}); quote fields that hold commas.") from None
    missing = [c for c in REQUIRED if c not in notes.columns]
    if missing:
        raise StagebookError(f"{path}: missing column(s) {missing}; the header must include {','.join(REQUIRED)}.")
    if notes.empty and allow_empty:
        return notes.assign(value=pd.Series(dtype=float))
    if notes.empty:
        raise StagebookError(f"{path}: no rows; add at least one reported result (or our own baseline as a start).")
    for column in ("citation", "approach", "metric"):
        blank = notes.index[notes[column].str.strip() == ""]
        if len(blank):
            raise StagebookError(f"{path}: row {blank[0] + 2} has an empty {column}; fill it in.")
    values = pd.to_numeric(notes.value, errors="coerce")
    if values.isna().any():
        bad = values.index[values.isna()][0]
        raise StagebookError(f"{path}: row {bad + 2} has a non-numeric value {notes.value[bad]!r}; write a number"
                             " like 0.97 (not 97%).")
    notes["value"] = values
    notes["metric"] = notes.metric.str.strip().str.lower()
    out_of_range = notes.index[notes.metric.isin(BOUNDED) & ~notes.value.between(0, 1)]
    if len(out_of_range):
        bad = out_of_range[0]
        raise StagebookError(f"{path}: row {bad + 2} reports {notes.metric[bad]} = {notes.value[bad]}, outside [0, 1];"
                             " write fractions (0.97), not percentages.")
    if "checked" in notes:
        unknown = notes.index[~notes.checked.str.strip().str.lower().isin(["yes", "no", ""])]
        if len(unknown):
            raise StagebookError(f"{path}: row {unknown[0] + 2} has checked = {notes.checked[unknown[0]]!r}; use yes or no.")
    return notes
