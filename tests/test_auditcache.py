"""The incremental audit: with its cache, a re-run decodes only new or changed files, and its result is the one a
full audit of the same files gives, on photo tiles of several sizes with planted copies of every family, digits,
colour images and broken files."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagebook import planting
from stagebook.audit import audit
from stagebook.auditcache import FileCache
from stagebook.manifest import build_manifest

from conftest import mixed_images


def _collection(folder: Path) -> None:
    "Photo tiles at 24-64 px with one planted copy of each family, 8-px digits, colour images, two broken files."
    rng = np.random.default_rng(4)
    for side in (24, 40, 64):
        tiles = planting.natural_images(side, 40, seed=side)
        (folder / f"photo{side}").mkdir(parents=True)
        for n, tile in enumerate(tiles):
            tile.save(folder / f"photo{side}" / f"{n:03d}.png")
        for k, family in enumerate(planting.FAMILIES):
            planting.plant(tiles[k], family, rng).save(folder / f"photo{side}" / f"copy_{family}.png")
    (folder / "digits").mkdir()
    for n, img in enumerate(planting.digit_images(8)[:150]):
        img.save(folder / "digits" / f"{n:03d}.png")
    mixed_images(folder.parent / "mixed", classes=3, per_class=12, seed=2)
    (folder / "colour").mkdir()
    for path in sorted((folder.parent / "mixed").rglob("*.png")):
        path.rename(folder / "colour" / f"{path.parent.name}_{path.name}")
    (folder / "digits" / "empty.png").write_bytes(b"")
    (folder / "digits" / "cut.png").write_bytes((folder / "digits" / "000.png").read_bytes()[:40])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _audit(root: Path, cache: Path | None):
    items = build_manifest("imgs", root)
    return audit(items, root, "auto", workers=2, progress=False, cache=cache)


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.near_pairs, b.near_pairs)
    assert a.self_test.numbers() == b.self_test.numbers()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    _collection(root / "imgs")
    return root


def _copy(collection: Path, tmp_path: Path) -> Path:
    shutil.copytree(collection, tmp_path / "project")
    return tmp_path / "project"


def _hold_back(root: Path, every: int = 10) -> list[Path]:
    "Move every tenth file out of the collection (the 10% that arrives later); returns where they were."
    files = sorted(p for p in (root / "imgs").rglob("*") if p.is_file())[::every]
    for path in files:
        dest = root / "later" / path.relative_to(root / "imgs")
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    return files


def test_ten_percent_more_images_decodes_only_those_and_matches_a_full_audit(collection: Path, tmp_path: Path):
    root = _copy(collection, tmp_path)
    cache = root / "data" / "audit_cache"
    held = _hold_back(root)
    first = _audit(root, cache)
    assert FileCache(cache).stored == first.items.sha256.nunique()
    for path in held:
        (root / "later" / path.relative_to(root / "imgs")).rename(path)
    (cache / "pairs-v1.npz").write_bytes(b"an earlier version's pair distances")
    again = _audit(root, cache)
    assert not (cache / "pairs-v1.npz").exists() and (cache / "neighbours-v1.npz").exists()
    shards = sorted(cache.glob("files-*.npz"))
    # only the new files were decoded: those whose bytes the first audit had not seen under another name
    audited = set(again.items.path)
    unseen = {_sha(p) for p in held if p.relative_to(root).as_posix() in audited} - set(first.items.sha256)
    assert len(shards) == 2 and set(np.load(shards[-1])["sha256"]) == unseen and len(unseen) >= 0.8 * len(held)
    _same(again, _audit(root, None))
    assert again.reuse["files_decoded"] == sum(_sha(p) in unseen for p in held)
    assert 0 < again.reuse["pairs_verified"] < again.reuse["pairs_remembered"]
    assert len(again.near_pairs) > 0 and (again.items.status != "ok").sum() == 2 and (again.items.colour == "RGB").any()


def test_with_trained_lists_a_re_run_matches_a_full_audit_over_the_same_lists(collection: Path, tmp_path: Path,
                                                                              monkeypatch):
    """Above `EXACT_BELOW` images the index has coarse lists, trained on the collection of the day; the cache keeps
    them, so a re-run after 10% more images searches only what changed and gives what a full audit over the same
    lists gives (a full audit without a cache trains its own lists, and may differ in pairs far from any threshold)."""
    from stagebook import auditcache, nearcopy
    monkeypatch.setattr(nearcopy, "EXACT_BELOW", 100)
    monkeypatch.setattr(nearcopy, "LIST_SIZE", 16)
    root = _copy(collection, tmp_path)
    cache, lists_only = root / "cache", root / "lists_only"
    held = _hold_back(root)
    _audit(root, cache)
    kept = auditcache.load_neighbours(cache)
    assert kept is not None and kept.trained is not None and len(kept.ids) > 200
    assert kept.homes is not None and len(kept.homes) == len(kept.ids)  # each image's list, so it is not assigned again
    empty = slice(0, 0)
    kept.ids, kept.rows, kept.squared, kept.lists, kept.moved, kept.homes = (
        getattr(kept, a)[empty] for a in ("ids", "rows", "squared", "lists", "moved", "homes"))
    auditcache.save_neighbours(lists_only, kept)  # the same lists, nothing else remembered
    for path in held:
        (root / "later" / path.relative_to(root / "imgs")).rename(path)
    again = _audit(root, cache)
    _same(again, _audit(root, lists_only))
    assert 0 < again.reuse["pairs_verified"] < again.reuse["pairs_remembered"] and len(again.near_pairs) > 0
    assert 0 < again.reuse["images_searched"] <= 0.15 * len(again.items)  # the new images, not all


def test_a_changed_file_is_audited_again_and_a_deleted_one_leaves_no_trace(collection: Path, tmp_path: Path):
    root = _copy(collection, tmp_path)
    cache = root / "cache"
    _audit(root, cache)
    changed = root / "imgs" / "photo40" / "003.png"
    before = Image.open(changed).convert("RGB")
    Image.fromarray(255 - np.asarray(before)).save(changed)  # the same file name, other pixels
    gone = root / "imgs" / "photo40" / "copy_shift.png"
    gone.unlink()
    again = _audit(root, cache)
    _same(again, _audit(root, None))
    rows = again.items.set_index("path")
    assert "imgs/photo40/copy_shift.png" not in rows.index
    assert rows.loc["imgs/photo40/003.png", "sha256"] == _sha(changed)
    paired = set(again.items.path.to_numpy()[again.near_pairs[["i", "j"]].to_numpy().ravel()])
    assert paired and "imgs/photo40/copy_shift.png" not in paired


def _settle(root: Path) -> None:
    "Give every image the same modification time in 2023, as files that arrived before today's audit have."
    import os
    for path in (root / "imgs").rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))


def test_unchanged_files_are_not_read_again_and_a_changed_or_touched_one_is(collection: Path, tmp_path: Path):
    import os
    root = _copy(collection, tmp_path)
    cache = root / "cache"
    _settle(root)
    first = _audit(root, cache)
    assert first.reuse["files_unread"] == 0  # nothing was known yet
    again = _audit(root, cache)
    assert again.reuse["files_unread"] == len(first.items) and again.reuse["files_decoded"] == 0
    _same(again, first)
    # other bytes of the same length (a broken file now) and a touched file whose bytes are the same
    changed, touched = root / "imgs" / "photo24" / "005.png", root / "imgs" / "digits" / "010.png"
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))
    os.utime(touched)
    third = _audit(root, cache)
    assert third.reuse["files_unread"] == len(first.items) - 2 and third.reuse["files_decoded"] == 1
    rows = third.items.set_index("path")
    assert rows.loc["imgs/photo24/005.png", "sha256"] == _sha(changed) != first.items.set_index("path").loc[
        "imgs/photo24/005.png", "sha256"]
    _same(third, _audit(root, None))
    # the data folder moved: manifest paths, sizes and times are the same, so nothing is read again
    _settle(root)
    fourth = _audit(root, cache)
    root.rename(tmp_path / "moved")
    moved = _audit(tmp_path / "moved", cache.parent.parent / "moved" / "cache")
    assert fourth.reuse["files_unread"] == len(first.items) - 2 and moved.reuse["files_unread"] == len(first.items)
    _same(moved, fourth)


def test_a_damaged_cache_costs_time_not_correctness(collection: Path, tmp_path: Path):
    root = _copy(collection, tmp_path)
    cache = root / "cache"
    _audit(root, cache)
    for shard in cache.glob("*.npz"):
        shard.write_bytes(b"not a numpy archive")
    _same(_audit(root, cache), _audit(root, None))


def test_a_cached_quarantine_verdict_is_kept(collection: Path, tmp_path: Path):
    root = _copy(collection, tmp_path)
    cache = root / "cache"
    first = _audit(root, cache).items.set_index("path").status
    again = _audit(root, cache).items.set_index("path").status
    assert again["imgs/digits/empty.png"] == first["imgs/digits/empty.png"] == "quarantined: zero-byte file"
    assert again["imgs/digits/cut.png"] == first["imgs/digits/cut.png"] != "ok"


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_a_cache_path_that_cannot_be_a_folder_is_one_line_before_any_work(tmp_path, where):
    import subprocess

    from conftest import BIN

    mixed_images(tmp_path / "imgs", classes=2, per_class=3, seed=1)
    (tmp_path / "notes.txt").write_text("kept")
    cache = "notes.txt" if where == "a_file" else "notes.txt/cache"
    done = subprocess.run([str(BIN / "stagebook"), "audit", "imgs", "--cache", cache, "--workers", "1"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "notes.txt" in done.stderr and "folder" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "kept"
    assert "self-test" not in done.stdout  # refused before the audit ran, not after it
