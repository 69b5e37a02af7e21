"""Sweeps on Ray: a killed worker's variant retried once then reported, a two-node cluster simulated on this machine
with every run reaching an MLflow tracking server, the winner's files brought back and verified, and the local
fallback."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import add_stage
from stagebook import StagebookError, server
from stagebook.sweep import bring_back, run_sweep

SLEEPY = ("from stagebook import stage\nimport time\nctx = stage.init(0)",
          "time.sleep(seconds)\nstage.output_path('models/w.txt').write_text(f'weights {rate}')\n"
          "stage.log_metrics({'score': rate})")


@pytest.fixture
def sleepy(project: Path) -> Path:
    "Stage 01_fit: sleeps `seconds`, writes an output file and scores `rate`."
    return add_stage(project, "01_fit", "rate: 1.0\nseconds: 0\n", "rate = 1.0\nseconds = 0", *SLEEPY)


def _kill_workers(out: Path, plan: dict[str, int], stop: threading.Event) -> None:
    """SIGKILL the Ray worker of variant v0N, `plan[v0N]` times, each once its attempt's MLflow run exists (the
    variant's folder then holds the run's id): mid-variant, with a run left RUNNING for the sweep to clean up."""
    killed = {name: [] for name in plan}  # run ids of the attempts killed
    while not stop.is_set():
        for name, times in plan.items():
            attempts = out / f"{name}.attempts"
            lines = attempts.read_text().splitlines() if attempts.is_file() else []
            run_file = out / name / "mlflow_run_id"
            if len(killed[name]) < min(times, len(lines)) and run_file.is_file():
                run_id = run_file.read_text().strip()
                if run_id and run_id not in killed[name]:
                    os.kill(int(lines[len(killed[name])].split()[1]), signal.SIGKILL)
                    killed[name].append(run_id)
        time.sleep(0.2)


def test_a_killed_worker_is_retried_once_then_reported_and_the_sweep_finishes(sleepy: Path):
    out = sleepy / "sweep"
    stop = threading.Event()
    killer = threading.Thread(target=_kill_workers, args=(out, {"v00": 1, "v01": 2}, stop), daemon=True)
    killer.start()
    try:
        summary = run_sweep("01", {"rate": [1.0, 2.0, 3.0]}, fixed=["seconds=8"], jobs=2, root=sleepy, out_dir=out,
                            metric="score", backend="ray").set_index("variant")
    finally:
        stop.set()
    assert summary.loc["v00", "status"] == "ok" and summary.loc["v00", "attempts"] == 2  # retried once, then fine
    assert summary.loc["v02", "status"] == "ok" and summary.loc["v02", "attempts"] == 1
    assert summary.loc["v01", "status"] == "failed" and summary.loc["v01", "attempts"] == 2
    assert "after a retry" in summary.loc["v01", "error"]
    client = MlflowClient(f"sqlite:///{sleepy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "01_fit sweep"]
    assert parent.data.metrics["lost"] == 1 and parent.data.metrics["failed"] == 1
    assert "v01: " in parent.data.tags["stagebook.failed_variants"]
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the killed attempts' runs: KILLED, no ghosts
    assert sum(r.info.status == "KILLED" for r in runs) == 3  # one per killed attempt
    assert (out / "v02" / "outputs/models/w.txt").read_text() == "weights 3.0"  # the winner, here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_share_the_variants_and_every_run_reaches_the_tracking_server(sleepy: Path, monkeypatch):
    from ray.cluster_utils import Cluster

    port = _free_port()
    tracking = server.start(sleepy, port=port)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        monkeypatch.setenv("STAGEBOOK_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # the one setting that sends a sweep to a cluster
        out = sleepy / "sweep"
        summary = run_sweep("01", {"rate": [1.0, 2.0, 3.0, 4.0]}, fixed=["seconds=2"], jobs=2, root=sleepy,
                            out_dir=out, metric="score", cpus_per_variant=1)
        assert summary.attrs["engine"].startswith(f"Ray on cluster {cluster.address} (2 node(s)")
        assert (summary.status == "ok").all() and summary.node_id.nunique() == 2, summary[["variant", "node_id"]]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
        [parent] = [r for r in runs if r.info.run_name == "01_fit sweep"]
        nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.status for r in nested) == ["FINISHED"] * 4
        # the winner's file, lost on this machine (as if its node's disk were elsewhere), comes back from the server
        best = summary.iloc[0]
        outputs = summary.attrs["outputs"][best.variant]
        assert list(outputs) == ["outputs/models/w.txt"]
        (out / best.variant / "outputs/models/w.txt").unlink()
        [back] = bring_back(sleepy, out, best.variant, best.run_id, outputs)
        assert back.read_text() == "weights 4.0"
        with pytest.raises(StagebookError, match="is not the file its node wrote"):
            back.unlink()
            bring_back(sleepy, out, best.variant, best.run_id, {"outputs/models/w.txt": "0" * 64})
        assert not back.exists()
    finally:
        cluster.shutdown()
        tracking.terminate()
        tracking.wait(timeout=30)


def test_the_local_fallback_runs_the_same_variants(sleepy: Path):
    summary = run_sweep("01", {"rate": [1.0, 2.0]}, jobs=2, root=sleepy, out_dir=sleepy / "s", metric="score",
                        backend="local", track=False)
    assert summary.score.tolist() == [2.0, 1.0] and summary.attrs["engine"] == "local processes"
    assert json.loads((sleepy / "s/v01/metrics.json").read_text())["score"] == 2.0


def test_fresh_workers_give_each_variant_a_new_ray_worker(sleepy: Path):
    def workers(out: Path) -> list[str]:
        return [line.split()[1] for f in sorted(out.glob("v*.attempts")) for line in f.read_text().splitlines()]

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray for both sweeps (they leave it up)
    try:
        run_sweep("01", {"rate": [1.0, 2.0]}, jobs=1, root=sleepy, out_dir=sleepy / "reused", backend="ray",
                  track=False, cpus_per_variant=2)
        run_sweep("01", {"rate": [1.0, 2.0]}, jobs=1, root=sleepy, out_dir=sleepy / "fresh", backend="ray",
                  track=False, cpus_per_variant=2, fresh_workers=True)
    finally:
        ray.shutdown()
    assert len(set(workers(sleepy / "reused"))) == 1  # one at a time: the same worker runs each variant's child
    assert len(workers(sleepy / "reused")) == 2 and len(set(workers(sleepy / "fresh"))) == 2
