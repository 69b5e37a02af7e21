"""Embedded digits, manifest, sticky split, the test-split guard and the data document's generated block."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stagebook import StagebookError
from stagebook.data import read_split
from stagebook.datadoc import END, START, replace_generated_block, split_statistics
from stagebook.embedded import write_digits
from stagebook.lineage import file_sha256
from stagebook.manifest import build_manifest
from stagebook.split import check_proportions, split_assignments

PROPS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def test_digits_are_written_per_class_and_byte_stable(tmp_path: Path):
    assert write_digits(tmp_path / "a", per_class=3) == 30
    write_digits(tmp_path / "b", per_class=3)
    files = sorted((tmp_path / "a").glob("*/*.png"))
    assert sorted({f.parent.name for f in files}) == [str(i) for i in range(10)]
    assert all(file_sha256(f) == file_sha256(tmp_path / "b" / f.relative_to(tmp_path / "a")) for f in files)
    assert Image.open(files[0]).size == (8, 8)


def test_all_embedded_digits(tmp_path: Path):
    assert write_digits(tmp_path / "all") == 1797


def _folder(root: Path, n_per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / "imgs" / label).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(root / "imgs" / label / f"{i}.png")
    return root / "imgs"


def test_manifest_from_folder_quarantines_unusable_files(tmp_path: Path):
    folder = _folder(tmp_path)
    (folder / "cat" / "empty.png").write_bytes(b"")
    (folder / "dog" / "notes.jpg").write_text("not an image")
    m = build_manifest(Path("imgs"), tmp_path)
    assert len(m) == 12 and set(m.label) == {"cat", "dog"}
    assert m.path.str.startswith("imgs/").all()
    status = dict(zip(m.path, m.status))
    assert status["imgs/cat/empty.png"] == "quarantined: zero-byte file"
    assert status["imgs/dog/notes.jpg"].startswith("quarantined: not a readable image")
    assert (m.status == "ok").sum() == 10


def test_manifest_from_csv_with_groups(tmp_path: Path):
    folder = _folder(tmp_path)
    (folder / "list.csv").write_text("path,label,group\ncat/0.png,cat,g1\ndog/0.png,dog,\n")
    m = build_manifest(folder / "list.csv", tmp_path)
    assert list(m.group) == ["g1", f"sha256:{m.sha256[1]}"]


@pytest.mark.parametrize("csv, message", [
    ("file,label\ncat/0.png,cat\n", r"missing column\(s\) \['path'\]"),
    ("path,label\ncat/0.png,\n", "row 2 has an empty label"),
    ("path,label\ncat/0.png,cat\ncat/0.png,cat\n", "row 3 repeats path 'cat/0.png'"),
    ("path,label\ncat/9.png,cat\n", "row 2 names 'cat/9.png', which does not exist"),
    ("", "not a readable CSV"),
])
def test_bad_csv_manifest_is_one_line_naming_file_and_row(tmp_path: Path, csv: str, message: str):
    folder = _folder(tmp_path)
    (folder / "list.csv").write_text(csv)
    with pytest.raises(StagebookError, match=message) as err:
        build_manifest(folder / "list.csv", tmp_path)
    assert "list.csv" in str(err.value) and "\n" not in str(err.value)


def test_missing_source_and_empty_folder(tmp_path: Path):
    with pytest.raises(StagebookError, match="not found; set `source`"):
        build_manifest(Path("nowhere"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagebookError, match="no images found"):
        build_manifest(Path("empty"), tmp_path)


def _manifest(n: int, start: int = 0) -> pd.DataFrame:
    ids = range(start, start + n)
    return pd.DataFrame({"path": [f"x/{i}.png" for i in ids], "label": [str(i % 3) for i in ids],
                         "group": [f"g{i}" for i in ids], "status": "ok"})


def test_split_is_deterministic_and_near_its_proportions():
    m = _manifest(20000)
    a, b = split_assignments(m, PROPS, 0), split_assignments(m.sample(frac=1, random_state=1), PROPS, 0)
    assert (a.set_index("path").split == b.set_index("path").split.reindex(a.path)).all()
    share = a.split.value_counts(normalize=True)
    assert all(abs(share[k] - v) < 0.02 for k, v in PROPS.items())


def test_split_is_sticky_when_data_grows_and_when_proportions_change():
    old = split_assignments(_manifest(1000), PROPS, 0)
    grown = split_assignments(_manifest(1100), {"train": 0.5, "valid": 0.25, "test": 0.25}, 0, previous=old)
    merged = old.merge(grown, on="path", suffixes=("_old", "_new"))
    assert len(merged) == 1000 and (merged.split_old == merged.split_new).all()


def test_groups_never_straddle_splits():
    m = _manifest(3000)
    m["group"] = [f"g{i // 5}" for i in range(3000)]
    s = split_assignments(m, PROPS, 0)
    assert (s.groupby("group").split.nunique() == 1).all()


@pytest.mark.parametrize("props", [{"train": 0.7, "valid": 0.2, "test": 0.2}, {"train": 1.0, "valid": 0.0},
                                   {"train": "a", "valid": 0, "test": 0}, {"train": 1.2, "valid": -0.2, "test": 0}])
def test_bad_proportions_are_refused(props):
    with pytest.raises(StagebookError, match="params/01_data_document.yaml: split proportions"):
        check_proportions(props, "params/01_data_document.yaml")


def test_test_split_is_refused_outside_the_sealed_stage(project: Path, monkeypatch):
    (project / "data").mkdir()
    split_assignments(_manifest(200), PROPS, 0).to_csv(project / "data" / "splits.csv", index=False)
    monkeypatch.setenv("STAGEBOOK_ROOT", str(project))
    monkeypatch.setenv("STAGEBOOK_STAGE", "04_tuning")
    assert len(read_split("train")) > 100
    with pytest.raises(StagebookError, match="refused outside stage 06_sealed_test"):
        read_split("test")
    monkeypatch.setenv("STAGEBOOK_STAGE", "06_sealed_test")
    assert (read_split("test").split == "test").all()


def test_generated_block_is_replaced_and_prose_kept(tmp_path: Path):
    doc = tmp_path / "data_doc.md"
    doc.write_text(f"# Doc\nwords people wrote\n{START}\nold\n{END}\nmore words\n")
    splits = split_assignments(_manifest(60), PROPS, 0)
    replace_generated_block(doc, split_statistics(splits))
    text = doc.read_text()
    assert "words people wrote" in text and "more words" in text and "old" not in text
    assert re.search(r"\|\s*total\s*\|.*\|\s*60\s*\|", text)
    assert "Items: 60 (60 usable, 0 quarantined)" in text


def test_data_doc_without_markers_is_refused_and_left_alone(tmp_path: Path):
    doc = tmp_path / "data_doc.md"
    doc.write_text("# Doc without markers\n")
    with pytest.raises(StagebookError, match="needs exactly one"):
        replace_generated_block(doc, "x")
    assert doc.read_text() == "# Doc without markers\n"
