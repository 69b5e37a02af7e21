"""Writing files so that a failure half-way never leaves a half-written file behind."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    "Write `text` to a sibling temp file, then rename it over `path` (atomic on one filesystem)."
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    "Write `data` to a sibling temp file, then rename it over `path` (atomic on one filesystem)."
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path: Path, fill) -> None:
    """Let `fill(file)` write a sibling temp file, then rename it over `path`: for writers that stream (np.savez),
    so a large file is not first built in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_tree(src: Path, dst: Path) -> None:
    "Move folder `src` to `dst`, removing the old `dst` only once `src` is complete."
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
