"""Stage notebooks keep one stored form: a real JupyterLab server, saving through `make lab`'s hook, changes no byte."""
from __future__ import annotations

import shutil
from pathlib import Path

from conftest import FRONT_END, REPO, git, jupyter_lab, save_as_a_browser_would
from stagebook import notebooks


def test_saving_from_jupyterlab_changes_nothing_git_sees(tmp_path: Path):
    root = tmp_path / "project"
    shutil.copytree(REPO / "nbs", root / "nbs", ignore=shutil.ignore_patterns(".*"))
    for name in ("pyproject.toml", ".gitignore"):  # .gitignore: JupyterLab's .ipynb_checkpoints/ is not the project's
        shutil.copy(REPO / name, root)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "notebooks")
    names = sorted(p.name for p in (root / "nbs").glob("*.ipynb"))
    before = {n: (root / "nbs" / n).read_bytes() for n in names}
    with jupyter_lab(root) as call:
        for name in names:
            save_as_a_browser_would(call, name)
    assert {n: (root / "nbs" / n).read_bytes() for n in names} == before
    assert git(root, "status", "--porcelain") == ""


def test_the_hook_leaves_other_files_alone(tmp_path: Path):
    model = {"type": "notebook", "content": {"nbformat": 4, "nbformat_minor": 5, "metadata": dict(FRONT_END),
                                             "cells": []}}
    notebooks.pre_save_hook(model, "scratch.ipynb", contents_manager=type("CM", (), {"root_dir": str(tmp_path)})())
    assert "language_info" in model["content"]["metadata"]  # not a stage notebook: saved as the user made it


def test_write_clean_stores_what_nbdev_clean_would(tmp_path: Path):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    book = notebooks.read(REPO / "nbs" / "00_problem_page.ipynb")
    book["metadata"].update(FRONT_END)
    book["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x\n"}]
    path = notebooks.write_clean(book, tmp_path / "nbs" / "00_problem_page.ipynb")
    assert path.read_bytes() == (REPO / "nbs" / "00_problem_page.ipynb").read_bytes()
