"""The manifest: one row per item (path, label, group, source, sha256, size, status) from an image folder or a CSV.

A folder holds one sub-folder per class; a CSV has `path,label` and optionally `group` and `source`, with paths
relative to the CSV's own folder. Paths in the manifest are relative to the project root, so it is portable.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import StagebookError
from .lineage import file_sha256

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
COLUMNS = ["path", "label", "group", "source", "sha256", "width", "height", "status"]


def _from_folder(folder: Path) -> pd.DataFrame:
    rows = [(p, p.parent.name) for p in sorted(folder.glob("*/*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise StagebookError(f"{folder}: no images found; expected one sub-folder per class (e.g. {folder}/cat/001.png)"
                             " or a CSV manifest with path,label columns.")
    return pd.DataFrame({"path": [p for p, _ in rows], "label": [lbl for _, lbl in rows], "group": "", "source": ""})


def _from_csv(csv: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise StagebookError(f"{csv}: not a readable CSV ({str(err).splitlines()[0]}); save it as UTF-8 with a header row.") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise StagebookError(f"{csv}: missing column(s) {missing}; the header must include path,label"
                             " (optional: group,source).")
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
    return pd.DataFrame({"path": paths, "label": table.label.str.strip(),
                         "group": table.get("group", pd.Series([""] * len(table))).astype(str),
                         "source": table.get("source", pd.Series([""] * len(table))).astype(str)})


def _inspect(path: Path) -> tuple[int, int, str]:
    "(width, height, status): status is 'ok' or 'quarantined: <reason>'."
    if path.stat().st_size == 0:
        return 0, 0, "quarantined: zero-byte file"
    try:
        with Image.open(path) as img:
            img.load()
            return img.width, img.height, "ok"
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return 0, 0, f"quarantined: not a readable image ({type(err).__name__})"


def build_manifest(source: Path, root: Path) -> pd.DataFrame:
    "Read a folder-per-class tree or a CSV into the manifest; unusable files are kept and marked, never dropped."
    source = (root / source).resolve()
    if source.is_dir():
        items = _from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = _from_csv(source)
    else:
        raise StagebookError(f"{source}: not found; set `source` in params/01_data_document.yaml to an image folder"
                             " (one sub-folder per class) or a CSV manifest with path,label columns.")
    inspected = [_inspect(Path(p)) for p in items.path]
    items["sha256"] = [file_sha256(Path(p)) for p in items.path]
    items["width"], items["height"], items["status"] = zip(*inspected)
    items["path"] = [Path(p).resolve().relative_to(root).as_posix() if Path(p).resolve().is_relative_to(root)
                     else Path(p).resolve().as_posix() for p in items.path]
    # An undeclared group is the content hash, so byte-identical copies always share a split.
    items["group"] = [g if g else f"sha256:{h}" for g, h in zip(items.group, items.sha256)]
    return items[COLUMNS].sort_values("path", ignore_index=True)
