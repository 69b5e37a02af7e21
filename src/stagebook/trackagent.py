"""One tracking helper for many runs: MLflow's import is paid once per machine and minute, not once per stage run.

Importing MLflow and its SQLAlchemy store costs about 2.7 s of CPU, the largest fixed cost of a short stage on a
2-core machine (`make run` runs seven stages in a row). The first tracked run therefore starts an agent
(`python -m stagebook.trackagent SOCKET`): a detached process that listens on a unix socket and speaks, per
connection, the same two-request protocol as the per-run helper (`stagebook.tracking`). Later runs connect to it.

- It is found by a key over what decides its behaviour: the interpreter, the toolkit's source files (an edit starts
  a new agent), the user, and the environment that selects the store (`STAGEBOOK_TRACKING*`, `MLFLOW_*`, PYTHONPATH).
- It greets every connection at once; a runner that gets no greeting within a few seconds uses a helper of its own,
  so a run is never lost to an agent that is starting or leaving.
- It opens the store afresh for every run (settings re-read, SQLite connections not pooled), so a moved or replaced
  `mlflow.db`, or an edited `[tool.stagebook]`, takes effect at the next run.
- It leaves after IDLE_SECONDS with no run open. `STAGEBOOK_TRACKING_AGENT=0` turns it off (a helper per run).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENABLE_VAR = "STAGEBOOK_TRACKING_AGENT"        # "0": no agent
IDLE_VAR = "STAGEBOOK_TRACKING_AGENT_IDLE"     # seconds without a run before the agent leaves
IDLE_SECONDS = 60.0
GREETING_TIMEOUT = 5.0                          # a started agent answers within ~0.1 s; then we give up on it


def enabled(env: dict) -> bool:
    return env.get(ENABLE_VAR, "1").strip() not in ("0", "false", "no", "off") and os.name == "posix"


def socket_path(env: dict) -> Path:
    "Where the agent for this interpreter, toolkit source, user and store-selecting environment listens."
    package = Path(__file__).resolve().parent
    sources = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in package.glob("*.py"))
    selecting = sorted((k, v) for k, v in env.items()
                       if k.startswith(("STAGEBOOK_TRACKING", "STAGEBOOK_ARTIFACT", "MLFLOW_")) or k == "PYTHONPATH")
    key = hashlib.sha256(json.dumps([sys.executable, str(package), sources, selecting]).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"stagebook-tracking-{os.getuid()}-{key}.sock"  # short: sun_path is 108 bytes


def connect(env: dict):
    """A connection to this machine's agent, started first if there is none; None if it cannot be had (the caller
    then starts a helper of its own). Returns (reader, writer, agent_pid)."""
    path = socket_path(env)
    found = _greeted(path)
    if found is not None:
        return found
    agent_env = {**env, "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": env.get("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")}
    try:
        subprocess.Popen([sys.executable, "-m", "stagebook.trackagent", str(path)], env=agent_env,
                         cwd=tempfile.gettempdir(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)  # no pipe of ours keeps a caller waiting
    except OSError:
        return None
    deadline = time.monotonic() + GREETING_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.02)
        found = _greeted(path)
        if found is not None:
            return found
    return None


def _greeted(path: Path):
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(GREETING_TIMEOUT)
        sock.connect(str(path))
        reader, writer = sock.makefile("r", encoding="utf-8"), sock.makefile("w", encoding="utf-8")
        hello = json.loads(reader.readline() or "{}")
        if "agent_pid" not in hello:
            raise OSError("no greeting")
        sock.settimeout(None)  # a run's finish may take as long as its artifacts take to copy
        return reader, writer, int(hello["agent_pid"])
    except (OSError, ValueError):
        sock.close()
        return None


def serve(path: Path) -> None:
    "The agent: one thread per connected run; leaves once no run has been open for the idle time."
    import fcntl

    from .tracking import converse

    idle = float(os.environ.get(IDLE_VAR, IDLE_SECONDS))
    guard = open(f"{path}.lock", "a")
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one agent per key: a second one started at once leaves
    except BlockingIOError:
        return
    path.unlink(missing_ok=True)  # left by an agent that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket is the user's own
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    listener.settimeout(0.5)
    open_runs, last, lock = 0, time.monotonic(), threading.Lock()

    def session(conn: socket.socket) -> None:
        nonlocal open_runs, last
        try:
            with conn, conn.makefile("r", encoding="utf-8") as reader, conn.makefile("w", encoding="utf-8") as writer:
                writer.write(json.dumps({"agent_pid": os.getpid()}) + "\n")
                writer.flush()
                converse(reader, writer)
        except OSError:
            pass  # the runner went away; its run stays RUNNING until `stagebook.runlock` reaps it
        finally:
            with lock:
                open_runs -= 1
                last = time.monotonic()

    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            with lock:
                if open_runs == 0 and time.monotonic() - last > idle:
                    break
            continue
        conn.settimeout(None)
        with lock:
            open_runs += 1
        threading.Thread(target=session, args=(conn,), daemon=True).start()
    path.unlink(missing_ok=True)  # first, so no new runner finds it; one still in the queue gets no greeting
    listener.close()
    os._exit(0)  # MLflow's exit handlers add nothing: every run was committed when its finish was answered


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    serve(Path(sys.argv[1]))
