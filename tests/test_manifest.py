"""Reading a team's data: an image folder or a CSV manifest; bad manifests end in one line naming file, row and fix."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stagebook import StagebookError
from stagebook.embedded import write_digits
from stagebook.lineage import file_sha256
from stagebook.manifest import build_manifest


def folder_of_images(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / "imgs" / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(root / "imgs" / label / f"{i}.png")
    return root / "imgs"


def test_digits_are_written_per_class_and_byte_stable(tmp_path: Path):
    assert write_digits(tmp_path / "a", per_class=3) == 30
    write_digits(tmp_path / "b", per_class=3)
    files = sorted((tmp_path / "a").glob("*/*.png"))
    assert sorted({f.parent.name for f in files}) == [str(i) for i in range(10)]
    assert all(file_sha256(f) == file_sha256(tmp_path / "b" / f.relative_to(tmp_path / "a")) for f in files)
    assert Image.open(files[0]).size == (8, 8)


def test_all_embedded_digits(tmp_path: Path):
    assert write_digits(tmp_path / "all") == 1797


def test_folder_lists_every_visible_file_as_an_item(tmp_path: Path):
    folder = folder_of_images(tmp_path)
    (folder / "cat" / "notes.txt").write_text("not an image: the audit quarantines it, the manifest keeps it")
    (folder / "cat" / ".DS_Store").write_bytes(b"\0")
    m = build_manifest("imgs", tmp_path)
    assert len(m) == 11 and set(m.label) == {"cat", "dog"} and m.path.str.startswith("imgs/").all()
    assert list(m.columns) == ["path", "label", "group", "source", "annotator"]


def test_csv_with_optional_columns_and_paths_relative_to_the_csv(tmp_path: Path):
    folder = folder_of_images(tmp_path)
    (folder / "list.csv").write_text("path,label,group,annotator\ncat/0.png,cat,g1,ann\ndog/0.png, dog ,,\n")
    m = build_manifest(folder / "list.csv", tmp_path)
    assert list(m.path) == ["imgs/cat/0.png", "imgs/dog/0.png"]
    assert list(m.label) == ["cat", "dog"] and list(m.group) == ["g1", ""] and list(m.annotator) == ["ann", ""]


@pytest.mark.parametrize("csv, message", [
    ("file,label\ncat/0.png,cat\n", r"missing column\(s\) \['path'\]"),
    ("path,class\ncat/0.png,cat\n", r"missing column\(s\) \['label'\]"),
    ("path,label\ncat/0.png,\n", "row 2 has an empty label"),
    ("path,label\ncat/0.png,cat\n,dog\n", "row 3 has an empty path"),
    ("path,label\ncat/0.png,cat\ncat/0.png,cat\n", "row 3 repeats path 'cat/0.png'"),
    ("path,label\ncat/9.png,cat\n", "row 2 names 'cat/9.png', which does not exist"),
    ("", "not a readable CSV"),
    ('path,label\n"cat/0.png,cat\n', "not a readable CSV"),
])
def test_bad_csv_manifest_is_one_line_naming_file_and_row(tmp_path: Path, csv: str, message: str):
    folder = folder_of_images(tmp_path)
    (folder / "list.csv").write_text(csv)
    with pytest.raises(StagebookError, match=message) as err:
        build_manifest(folder / "list.csv", tmp_path)
    assert "list.csv" in str(err.value) and "\n" not in str(err.value)


def test_non_utf8_csv_is_refused(tmp_path: Path):
    folder = folder_of_images(tmp_path)
    (folder / "list.csv").write_bytes("path,label\ncat/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(StagebookError, match="save it as UTF-8"):
        build_manifest(folder / "list.csv", tmp_path)


def test_missing_source_and_empty_folder(tmp_path: Path):
    with pytest.raises(StagebookError, match="not found; point `source` in params/data.yaml"):
        build_manifest("nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagebookError, match="no images found"):
        build_manifest("empty", tmp_path)


def test_paths_are_relative_to_the_data_root_so_the_folder_can_move(tmp_path: Path):
    folder = folder_of_images(tmp_path)
    m = build_manifest("imgs", tmp_path, "imgs")
    assert list(m.path[:2]) == ["cat/0.png", "cat/1.png"]
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert build_manifest(moved, tmp_path, moved).path.tolist() == m.path.tolist()


def test_an_item_outside_the_data_root_is_refused_in_one_line(tmp_path: Path):
    folder = folder_of_images(tmp_path)
    (folder / "list.csv").write_text("path,label\ncat/0.png,cat\n../stray.png,dog\n")
    Image.new("L", (6, 6)).save(tmp_path / "stray.png")
    with pytest.raises(StagebookError) as refused:
        build_manifest(folder / "list.csv", tmp_path, "imgs")
    text = str(refused.value)
    assert "stray.png: lies outside the data root" in text and "set `root` in params/data.yaml" in text
    assert "\n" not in text
