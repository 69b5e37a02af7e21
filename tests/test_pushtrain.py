"""Train from `git push`: a real bare repository with the hook installed, a push of `train/x`, and the results
coming back as a commit on the branch, the sealed-test stage never run."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import git
from stagebook import StagebookError
from stagebook.pushtrain import RESULTS_MARK, install_hook, stages_to_train


def test_only_stages_before_the_sealed_test_are_trained(dvc_stages: Path):
    assert stages_to_train(dvc_stages) == ["01_data", "05_check"]


def test_a_push_to_train_x_trains_and_the_results_come_back_on_the_branch(dvc_stages: Path, tmp_path: Path):
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    hook = install_hook(bare)
    assert hook.stat().st_mode & 0o111 and sys.executable in hook.read_text()
    git(dvc_stages, "remote", "add", "origin", str(bare))
    pushed = subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/train/x"], cwd=dvc_stages,
                            capture_output=True, text=True)
    assert pushed.returncode == 0 and "stagebook: training train/x at" in pushed.stderr, pushed.stderr
    start = git(dvc_stages, "rev-parse", "HEAD").strip()
    deadline = time.monotonic() + 240
    while git(bare, "rev-parse", "train/x").strip() == start:
        assert time.monotonic() < deadline, (bare.parent / "origin.git.stagebook" / "train-x.log").read_text()
        time.sleep(1)
    tip = git(bare, "rev-parse", "train/x").strip()
    assert git(bare, "log", "-1", "--format=%s", tip).startswith(RESULTS_MARK)
    assert git(bare, "rev-parse", f"{tip}^").strip() == start  # on top of what was pushed
    files = set(git(bare, "ls-tree", "-r", "--name-only", tip).split())
    assert {"metrics/01_data.json", "metrics/05_check.json", "lineage/05_check.json", "dvc.lock",
            "train_results.md"} <= files
    assert not any("06_sealed_test" in f and not f.startswith(("nbs/", "params/")) for f in files), files
    summary = git(bare, "show", f"{tip}:train_results.md")
    assert "succeeded" in summary and "Stages run: 01_data, 05_check" in summary
    lock = yaml.safe_load(git(bare, "show", f"{tip}:dvc.lock"))
    assert set(lock["stages"]) == {"01_data", "05_check"}
    assert git(bare, "rev-parse", "train/x").strip() == tip  # the results push did not set off another training


def test_a_foreign_hook_is_not_overwritten(tmp_path: Path):
    bare = tmp_path / "b.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    (bare / "hooks" / "post-receive").write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(StagebookError, match="a post-receive hook that stagebook did not write"):
        install_hook(bare)
    with pytest.raises(StagebookError, match="not a bare git repository"):
        install_hook(tmp_path)


def test_the_ci_workflow_trains_train_branches_with_the_same_command_and_never_the_test():
    from conftest import REPO
    from stagebook.cli import parser

    flow = yaml.safe_load((REPO / ".github/workflows/train.yml").read_text())
    assert flow[True]["push"]["branches"] == ["train/**"]  # YAML reads the key `on` as True
    steps = [s.get("run", "") for s in flow["jobs"]["train"]["steps"]]
    train = next(s for s in steps if "stagebook train" in s)
    args = parser().parse_args(train.split("stagebook ", 1)[1].split())
    assert args.command == "train" and args.commit
    assert not any(word in " ".join(steps) for word in ("submit", "06_", "dvc repro"))
    assert RESULTS_MARK in flow["jobs"]["train"]["if"]
    tex = next(s for s in steps if "apt-get install" in s)
    makefile = (REPO / "Makefile").read_text()
    assert tex.split("--no-install-recommends ")[1] == makefile.split("TEX_PACKAGES := ")[1].splitlines()[0]
