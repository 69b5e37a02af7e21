"""The one door to the data for notebooks: train and valid for every stage, test only through the seal in stage 06."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .project import find_root
from .split import SPLITS, load_splits

__all__ = ["load_splits", "read_split"]


def read_split(split: str, root: Path | None = None) -> pd.DataFrame:
    "Usable items of one split. `test` is served only inside the sealed-test stage's run, verified and logged."
    if split not in SPLITS:
        raise StagebookError(f"read_split({split!r}): unknown split; use one of {list(SPLITS)}.")
    root = root or find_root()
    if split == "test":
        from .seal import SealedTestSet
        from .stage import context
        ctx = context()
        sealed = SealedTestSet(root, reader=ctx.name or "", commit=ctx.lineage.get("code_commit", ""))
        return sealed.read(ctx.lineage.get("model_sha256", ""))
    table = load_splits(root)
    return table[table.split == split].reset_index(drop=True)
