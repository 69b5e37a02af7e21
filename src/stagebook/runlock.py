"""One run of a stage at a time, and no ghosts of runs that died.

`stagebook run` holds `reports/.locks/NN_name.json` (its PID) while it runs. A second run of the same stage is refused
with the first one's PID; other stages run side by side. A run killed with -9 leaves its lock behind: the next
stagebook command finds the lock's process gone, marks that run's MLflow run KILLED, removes its staging folder and
its kernel's socket folder, and says so in one line. A sweep started from the command line holds a lock of its own
(`sweep-NN_name-PID.json`: sweeps of one stage may run side by side), so its parent run and its variants' runs are
reaped the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import StagebookError

LOCK_DIR = Path("reports") / ".locks"
SOCKET_PREFIX = "stagebook-kernel-"  # + the runner's PID + "-": a socket folder whose runner died is removable


def alive(pid: int) -> bool:
    "Whether process `pid` exists (a zombie counts as gone)."
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


def _read(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def acquire(root: Path, stage: str, staging: Path) -> Path:
    "Take the stage's lock, or raise naming the live run that holds it; a dead holder is reaped first."
    lock = root / LOCK_DIR / f"{stage}.json"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _read(lock)
            if holder and alive(int(holder.get("pid", 0))):
                raise StagebookError(f"stage {stage} is already running (PID {holder['pid']}, started {holder.get('started', '?')});"
                                     f" wait for it to finish, or stop it with `kill {holder['pid']}`.") from None
            reap(root, lock, holder or {})
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "stage": stage, "staging": str(staging),
                       "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}, fh)
        return lock
    raise StagebookError(f"{lock}: could not take the stage's lock; remove the file if no run of {stage} is going.")


@contextmanager
def holding_sweep(root: Path, stage: str):
    "Mark this process as a sweep of `stage` while it runs: if it dies, the next command reaps its runs."
    lock = root / LOCK_DIR / f"sweep-{stage}-{os.getpid()}.json"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "stage": stage, "kind": "sweep",
                                "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}))
    try:
        yield lock
    finally:
        release(lock)


def release(lock: Path) -> None:
    holder = _read(lock)
    if holder is None or holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def reap(root: Path, lock: Path, holder: dict) -> None:
    "Clean up after a run whose process is gone: its MLflow run KILLED, its staging folder and lock removed."
    stage, pid = holder.get("stage", lock.stem), holder.get("pid")
    killed = mark_killed(root, stage, pid) if pid else 0
    staging = Path(holder["staging"]) if holder.get("staging") else None
    if staging and staging.is_dir() and root.resolve() in staging.resolve().parents:
        shutil.rmtree(staging, ignore_errors=True)
    lock.unlink(missing_ok=True)
    what = "sweep" if holder.get("kind") == "sweep" else "run"
    print(f"stagebook: the {what} of {stage} by PID {pid} had died; marked {killed} MLflow run(s) KILLED"
          + (" and removed its staging folder" if staging else ""), file=sys.stderr)


def reap_dead(root: Path) -> int:
    "Reap every lock whose process is gone, and kernel socket folders whose runner is gone; returns locks reaped."
    reaped = 0
    for lock in sorted((root / LOCK_DIR).glob("*.json")):
        holder = _read(lock)
        if holder is None or not alive(int(holder.get("pid", 0))):
            reap(root, lock, holder or {})
            reaped += 1
    for folder in Path(tempfile.gettempdir()).glob(f"{SOCKET_PREFIX}*-*"):
        pid = folder.name[len(SOCKET_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return reaped


def mark_killed(root: Path, stage: str, pid) -> int:
    "Set KILLED on the RUNNING runs that process `pid` started for `stage`: its own, nested and sweep variants'."
    from .project import settings
    from .tracking import open_client, tracking_uri

    if not (root / "pyproject.toml").is_file():
        return 0
    store = tracking_uri(root)
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        return 0
    client = open_client(root)
    experiment = client.get_experiment_by_name(settings(root)["experiment"])
    if experiment is None:
        return 0
    ghosts = {run.info.run_id for tag in ("stagebook.pid", "stagebook.owner_pid")  # the run, its nested and variant runs
              for run in client.search_runs([experiment.experiment_id], max_results=1000,
                                            filter_string=f"attributes.status = 'RUNNING' and tags.`{tag}` = '{pid}'")}
    for run_id in sorted(ghosts):
        client.set_terminated(run_id, "KILLED")
    return len(ghosts)
