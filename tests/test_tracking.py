"""The project's MLflow store: opened safely by processes that start together."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stagebook.tracking import open_client, tracking_uri

OPEN = "import sys; from pathlib import Path; from stagebook.tracking import open_client; " \
       "open_client(Path(sys.argv[1]), registry=True).search_experiments(); print('ok')"


def test_processes_opening_a_new_store_together_all_succeed(project: Path):
    # bare MlflowClients collide here ("table experiments already exists", "duplicate column name: step")
    store = Path(tracking_uri(project)[len("sqlite:///"):])
    assert not store.exists()
    starts = [subprocess.Popen([sys.executable, "-c", OPEN, str(project)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in starts]
    assert [(out.strip(), code) for out, _, code in results] == [("ok", 0)] * 4, [err[-400:] for _, err, _ in results]
    assert store.is_file()


def test_the_client_sees_runs_written_by_another(project: Path):
    client = open_client(project)
    experiment = client.create_experiment("x")
    run = client.create_run(experiment)
    assert open_client(project, registry=True).get_run(run.info.run_id).info.status == "RUNNING"
