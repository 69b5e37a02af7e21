"""One MLflow run per stage execution, in the project's own SQLite store.

`Tracker.start` is slow (importing MLflow, opening the store), so the runner calls it in a thread while the
notebook executes in its kernel; only `finish` (logging metrics and artifacts) adds to the wall time.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .lineage import Lineage
from .project import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def tracking_uri(root: Path) -> str:
    "The store's URI with a relative sqlite path made absolute against the project root."
    uri = settings(root)["tracking_uri"]
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(root / uri[len(prefix):])
    return uri


class Tracker:
    "An MLflow run for one stage execution: RUNNING from `start`, FINISHED or FAILED at `finish`."

    def __init__(self, root: Path, stage: str, params: dict, lineage: Lineage):
        self.root, self.stage, self.params, self.lineage = root, stage, params, lineage
        self.client = self.run_id = self.error = None
        self._thread: threading.Thread | None = None

    def start_in_background(self) -> None:
        self._thread = threading.Thread(target=self._start_safely, name="stagebook-mlflow", daemon=True)
        self._thread.start()

    def _start_safely(self) -> None:
        try:
            self.start()
        except Exception as err:  # reported by wait(); a thread cannot raise into the runner
            self.error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            from .errors import StagebookError
            raise StagebookError(f"{tracking_uri(self.root)}: MLflow store could not be opened"
                                 f" ({type(self.error).__name__}: {str(self.error).splitlines()[0] if str(self.error) else ''});"
                                 " move the store aside to start a fresh one.")

    def start(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
        logging.getLogger("alembic").setLevel(logging.WARNING)
        cfg = settings(self.root)
        self.client = MlflowClient(tracking_uri(self.root))
        experiment = self.client.get_experiment_by_name(cfg["experiment"])
        if experiment is None:
            artifacts = (self.root / cfg["artifact_root"]).resolve().as_uri()
            experiment_id = self.client.create_experiment(cfg["experiment"], artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        tags = {**self.lineage.as_tags(), "stagebook.stage": self.stage,
                "mlflow.source.git.commit": self.lineage.code_commit, "mlflow.source.name": f"nbs/{self.stage}.ipynb"}
        run = self.client.create_run(experiment_id, run_name=self.stage, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.params.items())]
        self.client.log_batch(self.run_id, params=params)

    def finish(self, status: str, metrics: dict | None = None, files: list[Path] = (), folders: list[Path] = ()) -> None:
        "Log metrics and artifacts, then close the run with `status` (FINISHED, FAILED or KILLED)."
        import time

        from mlflow.entities import Metric

        self.wait()
        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        for folder in folders:
            if folder.is_dir() and any(folder.iterdir()):
                self.client.log_artifacts(self.run_id, str(folder), artifact_path=folder.name)
        self.client.set_terminated(self.run_id, status)
