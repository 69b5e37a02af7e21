"""One MLflow run per stage execution, in the project's own SQLite store.

Importing MLflow and its SQLAlchemy store takes about 2.7 s of CPU. The runner therefore hands the tracking to
another process, so that work runs beside papermill and the kernel and only the final logging adds to a stage's wall
time: this machine's tracking agent (`stagebook.trackagent`), which has paid the import for earlier runs, or else a
helper of the run's own (`python -m stagebook.tracking`, fed over a pipe). Both speak `converse`'s protocol.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import StagebookError
from .lineage import Lineage
from .project import settings
from .protocol import OWNER_PID_VAR, ChildStaging, Staging


def tracking_uri(root: Path) -> str:
    "The store's URI with a relative sqlite path made absolute against the project root."
    uri = settings(root)["tracking_uri"]
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(root / uri[len(prefix):])
    return uri


def open_client(root: Path, registry: bool = False):
    """An MlflowClient on the project's store, the store created first if it is new.

    MLflow creates a new SQLite store's tables on first open; two processes doing so at once (two stages started
    together, or `stagebook runs` beside a starting run) collide ("table experiments already exists"). The first
    open therefore happens under a file lock keyed by the store's path."""
    import fcntl
    import hashlib
    import tempfile

    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(uri)
    key = hashlib.sha1(uri[len(prefix):].encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"stagebook-store-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(uri)
        client.search_experiments(max_results=1)  # opens (and if new, creates) the store
        if registry:
            client.search_registered_models(max_results=1)
    return client


def download(root: Path, artifact_uri: str | None = None, run_id: str | None = None, path: str | None = None) -> Path:
    """An artifact on local disk (by URI, or by run and path). MLflow resolves a server's `mlflow-artifacts:` URIs
    against its global tracking URI, so that is set to the project's store for the call."""
    import mlflow.artifacts
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # set for the call, then restored

    uri = tracking_uri(root)
    with _use_tracking_uri(uri):
        if artifact_uri:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri))
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri))


class Tracker:
    "The runner's handle on one MLflow run: RUNNING from `start_in_background`, FINISHED or FAILED at `finish`."

    def __init__(self, root: Path, stage: str, params: dict, lineage: Lineage, run_name: str | None = None,
                 run_dir: Path | None = None):
        self.root, self.stage, self.params, self.lineage, self.run_name = root, stage, params, lineage, run_name
        self.run_dir = run_dir  # where the notebook writes child runs; the helper logs each one as it finishes
        self.run_id: str | None = None
        self._proc: subprocess.Popen | None = None  # a helper of the run's own, when no agent could be had
        self.agent_pid: int | None = None           # the agent that tracks the run (`stagebook.trackagent`)
        self._reader = self._writer = None
        self._lock = threading.Lock()  # the runner and its run-id thread may both wait for the start reply

    def start_in_background(self) -> None:
        """Open the run without waiting for MLflow: through this machine's tracking agent (`stagebook.trackagent`,
        which has MLflow imported already), or else a helper process of the run's own."""
        from . import trackagent

        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet",
               "MLFLOW_LOGGING_LEVEL": "WARNING",  # not "Creating initial MLflow database tables..."
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # nor "View run ... at" with a tracking server
        agent = trackagent.connect(env) if trackagent.enabled(env) else None
        if agent is not None:
            self._reader, self._writer, self.agent_pid = agent
        else:
            self._proc = subprocess.Popen([sys.executable, "-m", "stagebook.tracking"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, env=env)
            self._reader, self._writer = self._proc.stdout, self._proc.stdin
        self._send({"op": "start", "root": str(self.root), "stage": self.stage, "params": self.params, "pid": os.getpid(),
                    "owner_pid": os.environ.get(OWNER_PID_VAR, ""), "lineage": self.lineage.as_dict(), "run_name": self.run_name,
                    "run_dir": str(self.run_dir) if self.run_dir else None})

    def wait_started(self) -> str:
        "The run's id once it exists; raises if the store could not be opened."
        with self._lock:
            if self.run_id is None:
                self.run_id = self._reply()["run_id"]
        return self.run_id

    def finish(self, status: str, metrics: dict | None = None, files: list[Path] = (), folders: list[Path] = (),
               run_dir: Path | None = None, parent_run_id: str | None = None, tags: dict | None = None) -> None:
        """Log metrics, curves, nested child runs and artifacts, then close the run with `status`.

        `run_dir` is the stage's staging folder: its `series.json` (curves) and `children/` (nested runs written by
        `stage.child_run`) are logged too, even when the stage failed, so a failed phase shows beside those that passed.
        """
        self.wait_started()
        staging = Staging(run_dir) if run_dir else None
        series = staging.series if staging else None
        children = sorted(str(p) for p in staging.children.iterdir()) if staging and staging.children.is_dir() else []
        self._send({"op": "finish", "status": status, "metrics": metrics or {},
                    "series": json.loads(series.read_text()) if series and series.is_file() else {},
                    "children": children, "parent_run_id": parent_run_id, "tags": tags or {},
                    "files": [str(p) for p in files if p.is_file()],
                    "folders": [str(p) for p in folders if p.is_dir() and any(p.iterdir())]})
        self._reply()
        self._writer.close()
        self._reader.close()  # with the agent, the socket closes with its last file
        if self._proc is not None:
            self._proc.wait()

    def _send(self, message: dict) -> None:
        self._writer.write(json.dumps(message, default=str) + "\n")
        self._writer.flush()

    def _reply(self) -> dict:
        try:
            line = self._reader.readline()
        except OSError:
            line = ""
        if not line.strip():
            reply = {"error": f"tracking process ended (exit code {self._proc.wait()})" if self._proc is not None
                     else f"tracking agent {self.agent_pid} closed the connection"}
        else:
            reply = json.loads(line)
        if "error" in reply:
            raise StagebookError(f"{tracking_uri(self.root)}: MLflow could not record the run ({reply['error']});"
                                 " if the store is damaged, move mlflow.db aside to start a fresh one.")
        return reply


KEY_METRICS = ("test_accuracy", "valid_accuracy", "best_baseline_valid_accuracy", "best_reported", "usable", "target")


def recent_runs(root: Path, per_stage: int = 3):
    "The last `per_stage` top-level runs of each stage (newest first): status, key metric, commit, duration."
    import pandas as pd
    store = tracking_uri(root)
    columns = ["stage", "started", "status", "minutes", "metric", "value", "commit", "run_id"]
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        return pd.DataFrame(columns=columns)
    client = open_client(root)
    experiment = client.get_experiment_by_name(settings(root)["experiment"])
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=5000) if experiment else []
    rows, seen = [], {}
    for run in runs:
        tags = run.data.tags
        stage = tags.get("stagebook.stage")
        if not stage or "mlflow.parentRunId" in tags or seen.get(stage, 0) >= per_stage:
            continue
        seen[stage] = seen.get(stage, 0) + 1
        key = next((k for k in KEY_METRICS if k in run.data.metrics), min(run.data.metrics, default=""))
        end = run.info.end_time or run.info.start_time
        rows.append({"stage": stage, "started": pd.to_datetime(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
                     "status": run.info.status, "minutes": round((end - run.info.start_time) / 60000, 1),
                     "metric": key, "value": run.data.metrics.get(key), "commit": tags.get("stagebook.code_commit", "")[:10]
                     + ("*" if tags.get("stagebook.code_dirty") == "True" else ""), "run_id": run.info.run_id[:12]})
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["stage", "started"], ascending=[True, False], kind="stable", ignore_index=True)


# MLflow's UI opens an experiment on the view its kind names; stage runs are model development, not GenAI traces.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, root: Path) -> str:
    "The project's experiment (created the first time, with its artifact root and the tags that open it well)."
    cfg = settings(root)
    experiment = client.get_experiment_by_name(cfg["experiment"])
    if experiment is None:
        if tracking_uri(root).startswith(("http://", "https://")):  # the server stores artifacts (stagebook server)
            return client.create_experiment(cfg["experiment"], tags=EXPERIMENT_TAGS)
        artifacts = (root / cfg["artifact_root"]).resolve().as_uri()
        return client.create_experiment(cfg["experiment"], artifact_location=artifacts, tags=EXPERIMENT_TAGS)
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _start(request: dict):
    "Create the experiment (first time) and a RUNNING run tagged with the lineage; log the params."
    from mlflow.entities import Param

    root = Path(request["root"])
    client = open_client(root)
    exp_id = experiment_id(client, root)
    lineage = Lineage(**request["lineage"])
    tags = {**lineage.as_tags(), "stagebook.stage": request["stage"], "mlflow.source.git.commit": lineage.code_commit,
            "stagebook.pid": str(request.get("pid", "")),  # a run whose process is gone is reaped (stagebook.runlock)
            "stagebook.owner_pid": str(request.get("owner_pid") or request.get("pid", "")),  # ... and its variants
            "mlflow.source.name": f"nbs/{request['stage']}.ipynb"}
    run = client.create_run(exp_id, run_name=request.get("run_name") or request["stage"], tags=tags)
    params = [Param(k, str(v)[:6000]) for k, v in sorted(request["params"].items())]
    client.log_batch(run.info.run_id, params=params)
    return client, run.info.run_id


def _metric_batch(metrics: dict, series: dict) -> list:
    "Scalars at step 0, and each curve as one metric with a step per value (MLflow plots it per epoch)."
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    batch += [Metric(k, float(v), now, step) for k, values in sorted(series.items()) for step, v in enumerate(values)]
    return batch


def _log_batches(client, run_id: str, metrics: list, params: list = ()) -> None:
    "MLflow accepts at most 1,000 metrics per call."
    if params:
        client.log_batch(run_id, params=list(params))
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_child(client, parent, folder: Path) -> None:
    "One nested run written by `stage.child_run`: params, metrics, curves and its artifacts."
    from mlflow.entities import Param

    files = ChildStaging(folder)

    def read(path: Path, default):
        return json.loads(path.read_text()) if path.is_file() else default

    name = files.name.read_text() if files.name.is_file() else folder.name
    tags = {k: v for k, v in parent.data.tags.items() if k.startswith("stagebook.") or k == "mlflow.source.git.commit"}
    run = client.create_run(parent.info.experiment_id, run_name=name,
                            tags={**tags, "mlflow.parentRunId": parent.info.run_id, "stagebook.child": name})
    params = [Param(k, str(v)[:6000]) for k, v in sorted(read(files.params, {}).items())]
    _log_batches(client, run.info.run_id, _metric_batch(read(files.metrics, {}), read(files.series, {})), params)
    if files.artifacts.is_dir():
        client.log_artifacts(run.info.run_id, str(files.artifacts))
    status = files.status.read_text().strip() if files.status.is_file() else "FINISHED"
    client.set_terminated(run.info.run_id, "FAILED" if status == "RUNNING" else status)


class _ChildWatcher:
    """Logs each child run as soon as the notebook closes it, while the kernel goes on (a stage with six baselines
    otherwise paid for six nested runs after its notebook had finished). `finish` logs whatever is left."""

    def __init__(self, client, run_id: str, run_dir: str | None):
        self.client, self.run_id = client, run_id
        self.children = Staging(Path(run_dir)).children if run_dir else None
        self.logged: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._parent = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        if self.children is not None:
            self.thread.start()

    def parent(self):
        if self._parent is None:
            self._parent = self.client.get_run(self.run_id)
        return self._parent

    def log(self, folder: Path) -> None:
        with self.lock:
            if str(folder) not in self.logged:
                _log_child(self.client, self.parent(), folder)
                self.logged.add(str(folder))

    def _watch(self) -> None:
        while not self.stop.wait(0.25):
            if not self.children.is_dir():
                continue
            for folder in sorted(self.children.iterdir()):
                status = ChildStaging(folder).status
                if str(folder) not in self.logged and status.is_file() and status.read_text().strip() in ("FINISHED", "FAILED"):
                    try:
                        self.log(folder)
                    except Exception:  # noqa: BLE001 (finish logs it again and reports the error)
                        return

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _finish(client, run_id: str, request: dict, watcher: _ChildWatcher | None = None) -> None:
    if request.get("parent_run_id"):
        client.set_tag(run_id, "mlflow.parentRunId", request["parent_run_id"])
    if request.get("tags"):  # lineage as the run left it (the model it produced or used), replacing the start's
        from mlflow.entities import RunTag
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in sorted(request["tags"].items())])
    _log_batches(client, run_id, _metric_batch(request["metrics"], request.get("series", {})))
    watcher = watcher or _ChildWatcher(client, run_id, None)
    watcher.close()
    for folder in request.get("children", []):
        watcher.log(Path(folder))
    for path in request["files"]:
        client.log_artifact(run_id, path)
    for folder in request["folders"]:
        client.log_artifacts(run_id, folder, artifact_path=Path(folder).name)
    client.set_terminated(run_id, request["status"])


def converse(reader, writer) -> bool:
    """One run's conversation: a `start` request, then a `finish` request, each answered with a JSON line. True when
    the run was finished; False when the runner went away first (its run stays RUNNING until it is reaped) or a
    request failed (the error is the answer)."""
    from .project import _file_settings

    def reply(message: dict) -> None:
        writer.write(json.dumps(message) + "\n")
        writer.flush()

    client = run_id = watcher = None
    try:
        for line in reader:
            request = json.loads(line)
            try:
                if request["op"] == "start":
                    _file_settings.cache_clear()  # an agent lives across runs: read [tool.stagebook] as it is now
                    _forget_stores()  # ... and open the store as it is now (it may have been moved aside)
                    client, run_id = _start(request)
                    reply({"run_id": run_id})
                    watcher = _ChildWatcher(client, run_id, request.get("run_dir"))
                elif request["op"] == "finish":
                    _finish(client, run_id, request, watcher)
                    reply({"ok": True})
                    return True
            except Exception as err:  # sent to the runner, which prints it as one line
                reply({"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
                return False
        return False
    finally:
        if watcher is not None:
            watcher.close()


def _forget_stores() -> None:
    """Drop the stores MLflow keeps per URI in this process: a store made afresh checks its tables, so a SQLite file
    moved aside and replaced is set up again instead of failing ("no such table") or writing to the old one."""
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    ModelRegistryStoreRegistry._get_store_with_resolved_uri.cache_clear()


def _serve() -> None:
    "The per-run helper (when there is no agent, `stagebook.trackagent`): one conversation over its stdin and stdout."
    logging.basicConfig(level=logging.WARNING)
    channel = sys.stdout  # replies only: anything else MLflow prints (a run's URL on a server) goes to stderr
    sys.stdout = sys.stderr
    if converse(sys.stdin, channel):
        os._exit(0)  # everything is committed; skip MLflow's exit handlers, which cost about 0.8 s of a stage's time


if __name__ == "__main__":
    _serve()
