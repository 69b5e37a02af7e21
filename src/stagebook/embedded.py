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


NEAR_DUPLICATE_KINDS = ("shift", "noise", "jpeg", "resize")


def write_near_duplicates(folder: Path, fraction: float = 0.1, seed: int = 0) -> list[tuple[str, str, str]]:
    """Add shifted, noisy, re-encoded and resized copies of a `fraction` of a folder-per-class tree, beside the originals.

    Returns (original, copy, kind) per copy, paths relative to `folder`: the ground truth an audit should recover.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    originals = sorted(p for p in folder.glob("*/*") if p.is_file() and not p.name.startswith("nd_"))
    chosen = rng.choice(len(originals), size=int(round(fraction * len(originals))), replace=False)
    made = []
    for n, index in enumerate(sorted(chosen)):
        source = originals[index]
        kind = NEAR_DUPLICATE_KINDS[n % len(NEAR_DUPLICATE_KINDS)]
        with Image.open(source) as img:
            pixels = np.asarray(img.convert("L"))
        if kind == "shift":
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1)][n % 6]
            moved = np.zeros_like(pixels)
            h, w = pixels.shape
            moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = pixels[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            copy, suffix = Image.fromarray(moved, "L"), ".png"
        elif kind == "noise":
            noisy = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255)
            copy, suffix = Image.fromarray(noisy.astype(np.uint8), "L"), ".png"
        elif kind == "jpeg":
            copy, suffix = Image.fromarray(pixels, "L"), ".jpg"
        else:
            copy, suffix = Image.fromarray(pixels, "L").resize((3 * pixels.shape[1], 3 * pixels.shape[0]), Image.BILINEAR), ".png"
        target = source.with_name(f"nd_{kind}_{source.stem}{suffix}")
        copy.save(target, quality=70) if suffix == ".jpg" else copy.save(target)
        made.append((source.relative_to(folder).as_posix(), target.relative_to(folder).as_posix(), kind))
    return made
