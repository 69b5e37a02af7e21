"""`stagebook server`: the project's MLflow tracking server, for sweeps whose variants run on other machines.

Variants on other nodes cannot write into the driver's SQLite file. On the head node, `stagebook server` runs
`mlflow server` over the project's own store (the same `mlflow.db`) and serves the artifacts itself
(`--serve-artifacts`, files under `mlartifacts/`), so a node needs only HTTP to the head. Point every process at it
with `STAGEBOOK_TRACKING_URI=http://HEAD:5000` (a sweep passes the variable on to its variants). Without that
variable nothing changes: the local default stays the SQLite file and needs no server.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .errors import StagebookError


def server_command(root: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    "`mlflow server` over the project's SQLite store, serving artifacts itself, one worker (starts in about 6 s)."
    from .project import settings

    store = settings(root)["tracking_uri"]
    if not store.startswith("sqlite:///"):
        raise StagebookError(f"pyproject.toml: tracking_uri {store!r} is not a SQLite store; `stagebook server` serves"
                             " the project's own store (unset STAGEBOOK_TRACKING_URI on the head node).")
    path = Path(store[len("sqlite:///"):])
    path = path if path.is_absolute() else root / path
    artifacts = root / settings(root)["artifact_root"]
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{path}",
            "--serve-artifacts", "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", "1"]


def environment() -> dict:
    "The server without MLflow's job runner (it forks a dozen more processes) and without telemetry."
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def start(root: Path, host: str = "127.0.0.1", port: int = 5000, wait: float = 60.0) -> subprocess.Popen:
    "Start the server in the background and wait until it answers /health."
    import time
    import urllib.request

    from .tracking import open_client
    open_client(root)  # creates the store (and its tables) once, under the store's lock, before the server opens it
    process = subprocess.Popen(server_command(root, host, port), cwd=root, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StagebookError(f"mlflow server exited ({process.returncode}): {process.stderr.read()[-600:]}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise StagebookError(f"mlflow server did not answer on {host}:{port} within {wait:.0f} s.")
