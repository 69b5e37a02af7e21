"""The embedded default dataset: scikit-learn's bundled digits, written as a folder-per-class PNG tree.

Writing real image files (rather than handing arrays around) means the pipeline reads the default data exactly as it
reads a team's own image folder.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: Path, per_class: int = 0) -> int:
    "Write digits as `out/<label>/digit_NNNN.png` (8x8 grayscale); `per_class` > 0 keeps the first N of each class."
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    kept = {label: 0 for label in range(10)}
    written = 0
    try:
        for index, (image, label) in enumerate(zip(pixels, digits.target)):
            if per_class and kept[label] >= per_class:
                continue
            kept[label] += 1
            folder = staging / str(label)
            folder.mkdir(exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"digit_{index:04d}.png", optimize=False)
            written += 1
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return written
