"""The audit on real files: every kind of broken file quarantined with its reason, conversions counted, and
duplicates (exact, same pixels, near) clustered without chaining distinct images together."""
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagebook import StagebookError
from stagebook.audit import audit, take_rows_in_place
from stagebook.embedded import write_digits, write_near_duplicates
from stagebook.manifest import build_manifest
from stagebook.split import split_assignments, straddling_clusters

PROPS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _run(tmp_path: Path, files: dict[str, bytes], threshold: float = 0.01) -> pd.DataFrame:
    for name, data in files.items():
        path = tmp_path / "imgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    result = audit(build_manifest("imgs", tmp_path), tmp_path, threshold, workers=1, progress=False)
    return result.items.set_index("path")


RNG = np.random.default_rng(0)
GRAY = Image.fromarray(RNG.integers(0, 255, (12, 12), dtype=np.uint8), "L")
RGB = Image.fromarray(RNG.integers(0, 255, (12, 12, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("name, data, reason", [
    ("a/zero.png", b"", "quarantined: zero-byte file"),
    ("a/truncated.png", _png_bytes(RGB)[:60], "quarantined: truncated image"),
    ("a/truncated.jpg", _png_bytes(RGB, "JPEG")[:200], "quarantined: truncated image"),
    ("a/text.png", b"this is not a picture at all", "quarantined: not an image"),
    ("a/random.jpg", bytes(RNG.integers(0, 255, 500, dtype=np.uint8)), "quarantined: not an image"),
    ("a/notes.txt", b"meeting notes", "quarantined: not an image"),
    ("a/float.tif", _png_bytes(Image.fromarray(RNG.random((12, 12)).astype(np.float32), "F"), "TIFF"), "quarantined: unsupported mode F"),
    ("a/tiny.png", _png_bytes(Image.new("L", (1, 1))), "quarantined: smaller than 2x2 pixels"),
])
def test_unusable_files_are_quarantined_with_their_reason_and_kept(tmp_path: Path, name, data, reason):
    items = _run(tmp_path, {name: data, "a/good.png": _png_bytes(GRAY)})
    assert items.status[f"imgs/{name}"].startswith(reason)
    assert items.status["imgs/a/good.png"] == "ok"
    assert (tmp_path / "imgs" / name).exists(), "quarantine is a list, not a move"


@pytest.mark.parametrize("image, converted", [
    (RGB.convert("CMYK"), "cmyk"),
    (Image.fromarray((RNG.integers(0, 65535, (12, 12))).astype(np.uint16)), "16-bit"),
    (RGB.convert("P", palette=Image.ADAPTIVE), "palette"),
    (RGB.convert("RGBA"), "alpha"),
    (GRAY.convert("LA"), "alpha"),
    (GRAY.convert("1"), "1-bit"),
])
def test_convertible_modes_are_converted_and_counted(tmp_path: Path, image, converted):
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF" if image.mode == "I;16" else "PNG"
    items = _run(tmp_path, {"a/x." + fmt.lower(): _png_bytes(image, fmt)})
    row = items.iloc[0]
    assert row.status == "ok" and row.converted == converted


def test_exact_and_same_pixel_duplicates_cluster_and_conflicting_labels_are_reported(tmp_path: Path):
    files = {"a/one.png": _png_bytes(RGB), "a/copy.png": _png_bytes(RGB), "b/same_pixels.bmp": _png_bytes(RGB, "BMP"),
             "a/other.png": _png_bytes(GRAY)}
    result = audit(build_manifest(_write(tmp_path, files), tmp_path), tmp_path, 0.01, workers=1, progress=False)
    items = result.items.set_index("path")
    cluster = items.cluster["imgs/a/one.png"]
    assert cluster.startswith("dup:") and items.cluster["imgs/a/copy.png"] == cluster == items.cluster["imgs/b/same_pixels.bmp"]
    assert items.cluster["imgs/a/other.png"] == ""
    summary = result.summary(min_class_items=3)
    assert summary["exact_duplicate_items"] == 1 and summary["same_pixel_items"] == 1
    assert summary["label_conflicts"] == 1 and summary["small_classes"] == ["b"]


def _write(root: Path, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "imgs" / name).write_bytes(data)
    return "imgs"


@pytest.mark.parametrize("count", [1, 2, 9, 500])
def test_rows_are_taken_in_place_as_fancy_indexing_would(count):
    "The audit's thumbnails are reordered in their own memory; every subset and order gives `rows[order]`."
    rng = np.random.default_rng(count)
    for _ in range(25):
        rows = rng.integers(0, 256, (count, 3, 3), dtype=np.uint8)
        order = rng.permutation(count)[:rng.integers(0, count + 1)]
        expected = rows[order].copy()
        taken = take_rows_in_place(rows, order)
        assert np.shares_memory(taken, rows) or not len(order)
        assert np.array_equal(taken, expected)


def test_bad_threshold_is_refused(tmp_path: Path):
    with pytest.raises(StagebookError, match="near_threshold=1.5: must be .auto. .* or a number in \\[0, 1\\)"):
        audit(pd.DataFrame({"path": [], "label": []}), tmp_path, 1.5)


def test_near_duplicates_of_digits_are_found_without_chaining(tmp_path: Path):
    "The issue's bar: >= 95% of added copies in their original's cluster, no straddling, largest cluster < 1%."
    write_digits(tmp_path / "digits")
    truth = write_near_duplicates(tmp_path / "digits", fraction=0.1, seed=1)
    assert {kind for *_, kind in truth} == {"shift", "noise", "jpeg", "resize"}
    result = audit(build_manifest("digits", tmp_path), tmp_path, "auto", progress=False)
    cluster = result.items.set_index("path").cluster
    found = [cluster[f"digits/{a}"] != "" and cluster[f"digits/{a}"] == cluster[f"digits/{b}"] for a, b, _ in truth]
    assert np.mean(found) >= 0.95, f"only {np.mean(found):.1%} of near copies clustered with their original"
    assert result.summary(5)["largest_cluster"] < 0.01 * len(result.items)
    splits = split_assignments(result.items, PROPS, 0)
    assert straddling_clusters(splits) == 0
    share = splits.split.value_counts(normalize=True)
    assert all(abs(share[k] - v) <= 0.02 for k, v in PROPS.items())


def test_parallel_and_serial_audits_agree(tmp_path: Path):
    write_digits(tmp_path / "digits", per_class=20)
    m = build_manifest("digits", tmp_path)
    serial = audit(m, tmp_path, 0.01, workers=1, progress=False).items
    parallel = audit(m, tmp_path, 0.01, workers=2, progress=False).items
    pd.testing.assert_frame_equal(serial, parallel)
