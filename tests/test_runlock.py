"""One run per stage at a time, and no ghosts after kill -9: real `stagebook run` processes on a toy stage."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import add_stage
from stagebook import runlock
from stagebook.tracking import open_client

SLOW = ("from stagebook import stage\nimport time\nctx = stage.init(0)\nstage.log_metrics({'x': 1.0})",
        "time.sleep(seconds)")


@pytest.fixture
def slow_stage(project: Path) -> Path:
    "Stage 01_slow sleeps `seconds` (a param) inside its kernel."
    return add_stage(project, "01_slow", "seconds: 0\n", "seconds = 0", *SLOW)


def _start(root: Path, seconds: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stagebook.cli", "run", "01_slow", "--set", f"seconds={seconds}"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, seconds: float = 90, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run ended early ({process.returncode}): {process.stderr.read()[-1500:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.2)


def _runs(root: Path) -> list:
    client = open_client(root)
    experiment = client.get_experiment_by_name("demo")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_second_run_of_the_same_stage_is_refused_naming_the_first(slow_stage: Path):
    first = _start(slow_stage, 20)
    lock = slow_stage / runlock.LOCK_DIR / "01_slow.json"
    try:
        _wait_for(lock.is_file)
        second = subprocess.run([sys.executable, "-m", "stagebook.cli", "run", "01_slow"], cwd=slow_stage,
                                capture_output=True, text=True)
        assert second.returncode == 1
        assert f"stage 01_slow is already running (PID {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert not lock.exists()


def test_a_killed_run_leaves_no_ghost_after_the_next_command(slow_stage: Path):
    victim = _start(slow_stage, 120)
    _wait_for(lambda: any(r.info.status == "RUNNING" for r in _runs(slow_stage)), process=victim)
    staging = slow_stage / "reports" / ".staging" / "01_slow"
    sockets = lambda: list(Path(tempfile.gettempdir()).glob(f"{runlock.SOCKET_PREFIX}{victim.pid}-*"))
    _wait_for(lambda: bool(sockets()), process=victim)  # the kernel is up
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert [r.info.status for r in _runs(slow_stage)] == ["RUNNING"] and staging.is_dir()

    shown = subprocess.run([sys.executable, "-m", "stagebook.cli", "runs"], cwd=slow_stage, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"the run of 01_slow by PID {victim.pid} had died; marked 1 MLflow run(s) KILLED" in shown.stderr
    assert [r.info.status for r in _runs(slow_stage)] == ["KILLED"]
    assert "KILLED" in shown.stdout
    assert not staging.exists() and not (slow_stage / runlock.LOCK_DIR / "01_slow.json").exists() and not sockets()
    rerun = subprocess.run([sys.executable, "-m", "stagebook.cli", "run", "01_slow"], cwd=slow_stage,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r.info.status for r in _runs(slow_stage)) == ["FINISHED", "KILLED"]


def test_other_stages_run_side_by_side(slow_stage: Path):
    add_stage(slow_stage, "02_other", "seconds: 0\n", "seconds = 0", *SLOW)
    first = _start(slow_stage, 15)
    try:
        _wait_for((slow_stage / runlock.LOCK_DIR / "01_slow.json").is_file)
        other = subprocess.run([sys.executable, "-m", "stagebook.cli", "run", "02_other", "--no-track"],
                               cwd=slow_stage, capture_output=True, text=True)
        assert other.returncode == 0, other.stderr
        assert first.poll() is None  # the first run was still going all along
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)


def test_a_lock_with_a_dead_pid_is_reaped_and_a_live_one_is_not(tmp_path: Path):
    locks = tmp_path / runlock.LOCK_DIR
    locks.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (locks / "01_a.json").write_text(json.dumps({"pid": dead.pid, "stage": "01_a", "staging": str(tmp_path / "x")}))
    (locks / "02_b.json").write_text(json.dumps({"pid": os.getpid(), "stage": "02_b"}))
    assert runlock.reap_dead(tmp_path) == 1
    assert not (locks / "01_a.json").exists() and (locks / "02_b.json").exists()


def test_a_killed_sweep_leaves_no_ghost_after_the_next_command(slow_stage: Path):
    "A sweep from the command line, killed with -9: its parent run and its variants' runs are reaped like a stage's."
    victim = subprocess.Popen([sys.executable, "-m", "stagebook.cli", "sweep", "01_slow", "seconds=120,121",
                               "--jobs", "2", "--backend", "local"], cwd=slow_stage, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lock = slow_stage / runlock.LOCK_DIR / f"sweep-01_slow-{victim.pid}.json"
    _wait_for(lambda: sum(r.info.status == "RUNNING" for r in _runs(slow_stage)) == 3, seconds=150, process=victim)
    assert lock.is_file()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    _wait_for(lambda: not any(runlock.alive(int(line.split()[0])) for attempts in slow_stage.glob("reports/sweeps/01_slow/*/v*.attempts")
                              for line in attempts.read_text().splitlines()), seconds=30)  # its variants die with it
    assert sum(r.info.status == "RUNNING" for r in _runs(slow_stage)) == 3  # ghosts, until a command looks

    shown = subprocess.run([sys.executable, "-m", "stagebook.cli", "runs"], cwd=slow_stage, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"the sweep of 01_slow by PID {victim.pid} had died; marked 3 MLflow run(s) KILLED" in shown.stderr
    assert sorted(r.info.status for r in _runs(slow_stage)) == ["KILLED"] * 3 and not lock.exists()
