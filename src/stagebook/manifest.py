"""The manifest: one row per item (path, label, group, source, annotator) from an image folder or a CSV.

A folder holds one sub-folder per class; a CSV has `path,label` and optionally `group`, `source` and `annotator`,
with paths relative to the CSV's own folder. Paths in the manifest are relative to the data root (`root` in
params/data.yaml), so moving the data folder, or cloning the project elsewhere, breaks nothing; an item outside the
root is refused. The audit adds what decoding the files tells.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError

COLUMNS = ["path", "label", "group", "source", "annotator"]
HARVEST_PREFIX = "harvest-"  # in a class folder: an item confirmed from the model's predictions (source "harvest")


def _from_folder(folder: Path) -> pd.DataFrame:
    # Every visible file in a class folder is an item: one that is not an image is quarantined and listed, not skipped.
    rows = [(p, p.parent.name) for p in sorted(folder.glob("*/*"))
            if p.is_file() and not p.name.startswith(".") and not p.parent.name.startswith(".")]
    if not rows:
        raise StagebookError(f"{folder}: no images found; expected one sub-folder per class (e.g. {folder}/cat/001.png)"
                             " or a CSV manifest with path,label columns.")
    source = ["harvest" if p.name.startswith(HARVEST_PREFIX) else "" for p, _ in rows]  # (stagebook.harvest)
    return pd.DataFrame({"path": [p for p, _ in rows], "label": [lbl for _, lbl in rows], "group": "", "source": source,
                         "annotator": ""})


def _from_csv(csv: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise StagebookError(f"{csv}: not a readable CSV ({str(err).splitlines()[0]}); save it as UTF-8 with a header row.") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise StagebookError(f"{csv}: missing column(s) {missing}; the header must include path,label"
                             " (optional: group,source,annotator).")
    for column in ("path", "label"):
        empty = table.index[table[column].str.strip() == ""]
        if len(empty):
            raise StagebookError(f"{csv}: row {empty[0] + 2} has an empty {column}; fill it in or delete the row.")
    dupes = table.index[table.duplicated("path")]
    if len(dupes):
        raise StagebookError(f"{csv}: row {dupes[0] + 2} repeats path {table.path[dupes[0]]!r}; keep one row per file.")
    paths = [(csv.parent / p).resolve() for p in table.path]
    absent = [i for i, p in enumerate(paths) if not p.is_file()]
    if absent:
        raise StagebookError(f"{csv}: row {absent[0] + 2} names {table.path[absent[0]]!r}, which does not exist"
                             f" (paths are relative to {csv.parent}); fix the path or remove the row.")
    optional = {c: table[c].astype(str).str.strip() if c in table.columns else "" for c in ("group", "source", "annotator")}
    return pd.DataFrame({"path": paths, "label": table.label.str.strip(), **optional})


def build_manifest(source: Path | str, root: Path, data_root: Path | str | None = None) -> pd.DataFrame:
    """Read a folder-per-class tree or a CSV into rows of path, label, group, source, annotator. `source` and
    `data_root` are relative to the project `root`; paths come out relative to `data_root`, and an item outside it is
    refused. Without `data_root`, paths are relative to `root` when inside it and absolute otherwise."""
    where = source
    source = (root / source).resolve()
    if source.is_dir():
        items = _from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = _from_csv(source)
    else:
        raise StagebookError(f"{where}: not found; point `source` in params/data.yaml at an image folder (one"
                             " sub-folder per class) or a CSV manifest with path,label columns (`stagebook data use PATH`).")
    if data_root is None:  # a look at any source (`stagebook audit`): project-relative inside it, absolute outside
        items["path"] = [Path(p).relative_to(root.resolve()).as_posix() if Path(p).is_relative_to(root.resolve())
                         else Path(p).as_posix() for p in items.path]
        return items[COLUMNS].sort_values("path", ignore_index=True)
    base = (root / data_root).resolve()
    resolved = [Path(p).resolve() for p in items.path]
    outside = [p for p in resolved if not p.is_relative_to(base)]
    if outside:
        raise StagebookError(f"{outside[0]}: lies outside the data root {base} ({len(outside)} item(s) do); set `root`"
                             " in params/data.yaml to a folder that holds every item, or move the files under it.")
    items["path"] = [p.relative_to(base).as_posix() for p in resolved]
    return items[COLUMNS].sort_values("path", ignore_index=True)
