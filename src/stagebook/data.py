"""The one door to the data for notebooks: train and valid for every stage, test only through the seal in stage 06."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .project import find_root, settings
from .split import SPLITS


def read_split(split: str, root: Path | None = None) -> pd.DataFrame:
    "Usable items of one split. `test` is served only inside the sealed-test stage's run, verified and logged."
    if split not in SPLITS:
        raise StagebookError(f"read_split({split!r}): unknown split; use one of {list(SPLITS)}.")
    root = root or find_root()
    if split == "test":
        from .lineage import current
        from .seal import SealedTestSet
        return SealedTestSet(root).read(current().get("model_sha256", ""))
    table = load_splits(root)
    return table[table.split == split].reset_index(drop=True)


def load_splits(root: Path | None = None, usable_only: bool = True) -> pd.DataFrame:
    "The split manifest as text columns: usable rows only, or every row (quarantined and missing ones too)."
    root = root or find_root()
    path = root / settings(root)["splits_file"]
    if not path.is_file():
        raise StagebookError(f"{path}: no split manifest yet; run stage 01 first (`stagebook run 01`).")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table[table.status == "ok"] if usable_only else table
