"""The one door to the data for notebooks: train and valid for every stage, test only for the sealed-test stage."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .project import find_root, settings
from .split import SPLITS


def read_splits(root: Path | None = None) -> pd.DataFrame:
    "The whole split manifest, usable items only, without the test rows."
    return _load(root)[lambda d: d.split != "test"].reset_index(drop=True)


def read_split(split: str, root: Path | None = None) -> pd.DataFrame:
    "Usable items of one split; `test` is served only inside the sealed-test stage's run."
    if split not in SPLITS:
        raise StagebookError(f"read_split({split!r}): unknown split; use one of {list(SPLITS)}.")
    root = root or find_root()
    if split == "test":
        from .stage import context
        sealed = settings(root)["sealed_test_stage"]
        if context().name != sealed:
            raise StagebookError(f"read_split('test'): refused outside stage {sealed}. The test set is read once, at the"
                                 " end, by that stage's `stagebook run`; use 'valid' to measure progress.")
    table = _load(root)
    return table[table.split == split].reset_index(drop=True)


def _load(root: Path | None) -> pd.DataFrame:
    root = root or find_root()
    path = root / settings(root)["splits_file"]
    if not path.is_file():
        raise StagebookError(f"{path}: no split manifest yet; run stage 01 first (`stagebook run 01`).")
    table = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
    return table[table.status == "ok"]
