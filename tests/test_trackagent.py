"""The tracking agent: one MLflow import for many runs, and never a lost run because of it."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from stagebook import lineage, trackagent
from stagebook.tracking import Tracker, open_client


@pytest.fixture
def agent_env(monkeypatch):
    "An agent of this test's own (the key covers STAGEBOOK_TRACKING*), leaving 2 s after its last run."
    monkeypatch.setenv(trackagent.ENABLE_VAR, f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv(trackagent.IDLE_VAR, "2")
    yield dict(os.environ)


def _run(root: Path, name: str, metric: float) -> Tracker:
    tracker = Tracker(root, "01_toy", {"scale": metric}, lineage.compute(root, "p"), run_name=name)
    tracker.start_in_background()
    tracker.finish("FINISHED", {"score": metric})
    return tracker


def _runs(root: Path) -> dict[str, float]:
    client = open_client(root)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r.data.metrics["score"] for r in client.search_runs(experiments)
            if r.info.status == "FINISHED"}


def _gone(pid: int, path: Path, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():  # exited (a zombie until this test's Popen reaps)
            return not path.exists()
        time.sleep(0.1)
    return False


def test_runs_in_a_row_share_one_agent_and_each_is_recorded(toy_stage: Path, agent_env):
    first, second = _run(toy_stage, "a", 1.0), _run(toy_stage, "b", 2.0)
    assert first.agent_pid is not None and first.agent_pid == second.agent_pid
    assert _runs(toy_stage) == {"a": 1.0, "b": 2.0}
    assert _gone(first.agent_pid, trackagent.socket_path(agent_env))  # it leaves once idle, socket and all


def test_without_the_agent_each_run_has_a_helper_of_its_own(toy_stage: Path, monkeypatch):
    monkeypatch.setenv(trackagent.ENABLE_VAR, "0")
    tracker = _run(toy_stage, "alone", 3.0)
    assert tracker.agent_pid is None and tracker._proc.returncode == 0
    assert _runs(toy_stage) == {"alone": 3.0}


def test_a_store_moved_aside_between_runs_is_made_afresh_by_the_same_agent(toy_stage: Path, agent_env):
    first = _run(toy_stage, "old", 1.0)
    store = toy_stage / "mlflow.db"
    store.rename(toy_stage / "mlflow.old.db")  # what the error message tells a user with a damaged store to do
    second = _run(toy_stage, "new", 2.0)
    assert second.agent_pid == first.agent_pid
    assert _runs(toy_stage) == {"new": 2.0}  # in the new file, not written into the moved one's open connection


def test_a_runner_that_dies_mid_run_leaves_the_agent_serving_the_next(toy_stage: Path, agent_env):
    dying = Tracker(toy_stage, "01_toy", {}, lineage.compute(toy_stage, "p"), run_name="killed")
    dying.start_in_background()
    dying.wait_started()
    dying._writer.close()  # as a killed runner's socket closes
    dying._reader.close()
    later = _run(toy_stage, "after", 5.0)
    assert later.agent_pid == dying.agent_pid
    statuses = {r.info.run_name: r.info.status for r in open_client(toy_stage).search_runs(
        [e.experiment_id for e in open_client(toy_stage).search_experiments()])}
    assert statuses == {"killed": "RUNNING", "after": "FINISHED"}  # the dead one is left for runlock to reap


def test_an_edited_setting_takes_effect_at_the_next_run_through_the_agent(toy_stage: Path, agent_env):
    first = _run(toy_stage, "before", 1.0)
    cfg = toy_stage / "pyproject.toml"
    cfg.write_text(cfg.read_text().replace('experiment = "demo"', 'experiment = "renamed"'))
    second = _run(toy_stage, "after", 2.0)
    assert second.agent_pid == first.agent_pid
    client = open_client(toy_stage)
    named = {e.name: e.experiment_id for e in client.search_experiments()}
    assert [r.info.run_name for r in client.search_runs([named["renamed"]])] == ["after"]


def test_the_key_changes_with_the_store_selecting_environment_only():
    base = {"PATH": "/bin", "HOME": "/root"}
    assert trackagent.socket_path(base) == trackagent.socket_path({**base, "STAGEBOOK_RUN_DIR": "/x", "TERM": "y"})
    assert trackagent.socket_path(base) != trackagent.socket_path({**base, "STAGEBOOK_TRACKING_URI": "http://h:5000"})
    assert trackagent.socket_path(base) != trackagent.socket_path({**base, "MLFLOW_TRACKING_TOKEN": "t"})
    assert len(str(trackagent.socket_path(base)).encode()) < 100  # a unix socket's path must fit in 108 bytes
