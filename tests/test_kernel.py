"""The stage kernel ends without teardown, and loses nothing a normal ending would have kept."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import add_stage, wait_for_warm_kernels

from stagebook.execute import run_stage

CELLS = ("import atexit, os, sys\n"
         "from stagebook import stage\n"
         "ctx = stage.init(0)\n"
         "with open('argv.txt', 'w') as f:\n    f.write(' '.join(sys.argv))\n"
         "with open('parent.txt', 'w') as f:\n    f.write(open(f'/proc/{os.getppid()}/cmdline').read())",
         "left_open = open('left_open.txt', 'w')\nleft_open.write('kept' * n)  # never closed, as notebooks do",
         "atexit.register(lambda: open('at_exit.txt', 'w').write('ran'))\n"
         "stage.log_metrics({'n': n})")


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_a_stage_kernel_is_ours_and_keeps_open_files_and_exit_handlers(project: Path, start: str, monkeypatch):
    root = add_stage(project, "01_ending", "n: 3\n", "n = 3", *CELLS)
    if start == "cold":
        monkeypatch.setenv("STAGEBOOK_WARM_KERNELS", "0")
    else:  # forked by the warm-kernel server (`stagebook.warmkernel`), which the first run starts
        monkeypatch.delenv("STAGEBOOK_WARM_KERNELS", raising=False)
        run_stage("01", root=root, track=False)
        wait_for_warm_kernels(root)
        for name in ("left_open.txt", "at_exit.txt"):
            (root / name).unlink()
    run_stage("01", root=root, track=False)
    assert ("stagebook.warmkernel" in (root / "parent.txt").read_text()) == (start == "warm")
    assert "stagebook/kernel.py" in (root / "argv.txt").read_text()
    assert (root / "left_open.txt").read_text() == "keptkeptkept"
    assert (root / "at_exit.txt").read_text() == "ran"


def test_quick_exit_keeps_its_code_and_runs_exit_handlers(tmp_path: Path):
    script = ("import atexit, sys\nfrom stagebook.startup import quick_exit\n"
              f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').close())\n"
              f"buffered = open({str(tmp_path / 'buffered')!r}, 'w'); buffered.write('x' * 10)\n"
              "print('printed', end='')\nquick_exit(3)\nprint('never')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (3, "printed")
    assert (tmp_path / "ran").exists() and (tmp_path / "buffered").read_text() == "x" * 10


def test_the_command_keeps_its_exit_code_and_output_when_it_ends_quickly(toy_stage: Path, tmp_path: Path):
    ok = subprocess.run([sys.executable, "-m", "stagebook.cli", "stages"], cwd=toy_stage, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "01_toy\n")
    refused = subprocess.run([sys.executable, "-m", "stagebook.cli", "stages"], cwd=tmp_path, capture_output=True,
                             text=True, env={**__import__("os").environ, "STAGEBOOK_ROOT": ""})
    assert refused.returncode == 1 and "not inside a stagebook project" in refused.stderr
