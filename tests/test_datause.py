"""`stagebook data use PATH`: one command points a copy of the template at a team's own images."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, git, mixed_images
from stagebook import StagebookError
from stagebook.datause import use_data
from stagebook.dataconfig import load_data_config


@pytest.fixture
def template_copy(tmp_path: Path) -> Path:
    "The template's tracked files, with the embedded digits written, as a team has it after `make run`."
    root = tmp_path / "project"
    for rel in git(REPO, "ls-files").splitlines():
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    from stagebook.embedded import write_digits
    write_digits(root / "data" / "raw" / "digits", per_class=2)
    for record in ("data/splits.csv", "data/test.seal.json", "data/test_ledger.jsonl"):
        (root / record).write_text("the worked example's\n")
    return root


def test_a_folder_outside_the_project_becomes_the_data(template_copy: Path, tmp_path: Path):
    images = mixed_images(tmp_path / "team_images")
    report = use_data(template_copy, images)
    cfg = load_data_config(template_copy)
    assert cfg.source == cfg.root == images.resolve().as_posix()  # outside: absolute, and DVC hashes it in place
    assert cfg.channels == 3 and 32 <= cfg.image_size <= 64 and report.inferred.colour > 0
    pipeline = yaml.safe_load((template_copy / "dvc.yaml").read_text())
    assert "vars" not in pipeline and "embed_digits" not in pipeline["stages"]
    deps = pipeline["stages"]["01_data_document"]["deps"]
    assert images.resolve().as_posix() in deps and "data/raw/digits" not in deps
    assert not (template_copy / "data" / "raw" / "digits").exists()
    assert not (template_copy / "params" / "embed_digits.yaml").exists()
    assert (template_copy / "literature.csv").read_text().count("\n") == 1
    assert not (template_copy / "data" / "splits.csv").exists() and not (template_copy / "data" / "test.seal.json").exists()
    doc = (template_copy / "data_doc.md").read_text()
    assert "To be written by the team" in doc and "8×8 grayscale" not in doc
    lines = report.lines()
    assert any("channels 3" in ln for ln in lines) and any(ln.startswith("stagebook: to write:") for ln in lines)


def test_a_csv_manifest_inside_the_project_with_images_beside_it(template_copy: Path):
    images = mixed_images(template_copy / "data" / "scans", classes=3, per_class=6)
    rows = ["path,label,group"] + [f"scans/{p.parent.name}/{p.name},{p.parent.name},g{i // 2}"
                                   for i, p in enumerate(sorted(images.glob("*/*.png")))]
    (template_copy / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    report = use_data(template_copy, "data/manifest.csv", channels=1)
    cfg = load_data_config(template_copy)
    assert (cfg.source, cfg.root, cfg.channels) == ("data/manifest.csv", "data", 1)
    assert "channels 1 as given" in report.lines()[1]
    deps = yaml.safe_load((template_copy / "dvc.yaml").read_text())["stages"]["01_data_document"]["deps"]
    assert "data/manifest.csv" in deps and "data" in deps


def test_the_stages_still_agree_with_their_params_after_it(template_copy: Path, tmp_path: Path):
    "The template's own checks (params vs notebooks vs schemas vs dvc.yaml) pass on the changed project."
    use_data(template_copy, mixed_images(tmp_path / "imgs", classes=2, per_class=4))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                           str(template_copy / "tests" / "test_stages.py"), "-k", "params or parameters or pipeline"],
                          cwd=template_copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "nowhere: not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
])
def test_a_bad_source_is_one_line_and_changes_nothing(template_copy: Path, tmp_path: Path, make, message: str):
    before = {p: p.read_bytes() for p in template_copy.rglob("*") if p.is_file()}
    with pytest.raises(StagebookError) as refused:
        use_data(template_copy, make(tmp_path))
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert {p: p.read_bytes() for p in template_copy.rglob("*") if p.is_file()} == before
