"""`stagebook stage new`: the new stage runs, DVC knows it, and the project's consistency checks still pass."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import REPO, git
from stagebook import StagebookError, colab
from stagebook.scaffold import new_stage


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    "A project as `stagebook new` leaves it (the template's tracked files without the toolkit's), under git."
    root = tmp_path / "project"
    for rel in git(REPO, "ls-files").splitlines():
        toolkit = rel.startswith(("src/stagebook/", "bench/")) or (rel.startswith("tests/") and rel != "tests/test_stages.py")
        if (REPO / rel).is_file() and not toolkit:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "copy")
    return root


def test_a_new_stage_is_wired_like_the_others_and_runs(copy: Path):
    written = new_stage(copy, "07_deployment", report=True)
    assert {p.relative_to(copy).as_posix() for p in written} == {
        "nbs/07_deployment.ipynb", "params/07_deployment.yaml", "params/07_deployment.schema.yaml",
        "reports/templates/07_deployment.texw", "dvc.yaml"}
    book = nbformat.read(copy / "nbs" / "07_deployment.ipynb", as_version=4)
    nbformat.validate(book)
    assert colab.is_setup_cell(book.cells[0].source)
    assert sum("parameters" in c.metadata.get("tags", []) for c in book.cells) == 1
    spec = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]["07_deployment"]
    assert spec["cmd"] == "stagebook run 07_deployment" and "metrics/06_sealed_test.json" in spec["deps"]
    listed = subprocess.run(["dvc", "stage", "list"], cwd=copy, capture_output=True, text=True)
    assert listed.returncode == 0 and "07_deployment" in listed.stdout, listed.stderr
    done = subprocess.run(["stagebook", "run", "07_deployment", "--no-track"], cwd=copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (copy / "metrics" / "07_deployment.json").is_file() and (copy / "reports" / "07_deployment.pdf").is_file()
    checks = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_stages.py"],
                            cwd=copy, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(copy / "src")})
    assert checks.returncode == 0, checks.stdout[-3000:]  # eight stages: the seven-stage pin is the example's only


@pytest.mark.parametrize("name, message", [("7_x", "expected two digits"), ("04_again", "is taken by 04_tuning"),
                                           ("08-x", "expected two digits")])
def test_bad_or_taken_stage_names_are_refused_in_one_line(copy: Path, name: str, message: str):
    before = (copy / "dvc.yaml").read_text()
    with pytest.raises(StagebookError, match=message):
        new_stage(copy, name)
    assert (copy / "dvc.yaml").read_text() == before and not (copy / "nbs" / f"{name}.ipynb").exists()
