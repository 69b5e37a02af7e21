"""Where sweep variants run: Ray.

With no setting, Ray starts inside the sweep's process, sized to this machine, and stops with it. `RAY_ADDRESS` (or
`stagebook sweep --address`) sends the same variants to a running cluster (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others). Each variant is one Ray task with declared CPUs and GPUs, retried
once if its worker dies (`max_retries=1`); the task runs the variant as it always ran, `stagebook run STAGE
--variant-dir ...` in a fresh child process (its own interpreter, kernel, working and socket folders, GPU memory
freed when it exits) that dies with the worker. That child is the one-variant-per-process isolation, so by default
the Ray worker itself is reused; `fresh_workers` (`sweep --fresh-workers`) sets `max_calls=1`, a new Ray worker per
variant too, which costs about 2.6 s of worker start-up per variant on a 2-core machine.

When Ray cannot be imported or started (a locked-down machine), the sweep falls back to local processes (a thread
pool around the same child process) and says so: a sweep never fails only because the engine is missing.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cpus import available as available_cpus

RAY_ENV = "RAY_ADDRESS"


@dataclass
class Engine:
    "The engine a sweep runs on, and what it cost to start."
    kind: str  # "ray" or "local"
    address: str = ""
    start_seconds: float = 0.0
    nodes: int = 1
    cpus: float = 0.0
    note: str = ""  # why the sweep fell back to local processes
    started_here: bool = False

    def describe(self) -> str:
        if self.kind == "ray":
            where = f"cluster {self.address}" if self.address else "this machine"
            return f"Ray on {where} ({self.nodes} node(s), {self.cpus:g} CPUs; started in {self.start_seconds:.1f} s)"
        return "local processes" + (f" ({self.note})" if self.note else "")


def start(address: str | None = None, backend: str = "auto") -> Engine:
    "Connect to (or start) Ray; with backend 'local', or when Ray is unavailable under 'auto', local processes."
    if backend == "local":
        return Engine("local")
    address = address or os.environ.get(RAY_ENV) or None
    t0 = time.perf_counter()
    try:
        import ray
    except ImportError as err:
        if backend == "ray":
            from .errors import StagebookError
            raise StagebookError(f"sweep --backend ray: Ray is not installed ({err}); `pip install ray`.") from None
        return Engine("local", note="Ray is not installed")
    try:
        started_here = not ray.is_initialized()
        if started_here:
            if not address:  # a Ray of our own, reachable only from this machine: no token to manage
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True, **({} if address else {"num_cpus": available_cpus()}))
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if started_here and not address:
            _warm_up(ray, int(resources.get("CPU", 1)))
    except Exception as err:  # Ray's own start-up failures are many and varied
        if backend == "ray" or address:
            from .errors import StagebookError
            raise StagebookError(f"sweep: Ray could not start or connect ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); check {RAY_ENV}.") from None
        return Engine("local", note=f"Ray could not start: {type(err).__name__}")
    return Engine("ray", address or "", time.perf_counter() - t0, nodes, float(resources.get("CPU", 0)),
                  started_here=started_here)


def _ready(seconds: float) -> int:
    "A task that only holds its worker a moment: every worker is up, and has imported this module, once they return."
    time.sleep(seconds)
    return os.getpid()


def _warm_up(ray, slots: int) -> None:
    """Wait until Ray's start-up is over: `ray.init` returns while its worker processes are still starting and
    importing, which would otherwise run beside (and slow) the first variants. Part of the start-up time, so it is
    reported with it, not in the sweep's."""
    ray.get([ray.remote(num_cpus=1)(_ready).remote(0.2) for _ in range(max(1, slots))])


def stop(engine: Engine) -> None:
    if engine.kind == "ray" and engine.started_here:
        import ray
        ray.shutdown()


def _die_with_parent() -> None:
    "In the variant's child process: be killed when the worker that started it dies (Linux), and lead its own group."
    os.setsid()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_variant(cmd: list[str], cwd: str, env: dict, folder: str, attempts_file: str) -> dict:
    """One variant, where it is scheduled: the child `stagebook run`, then what the driver needs back (exit code, the
    error's last line, the run's metrics, and the sha256 of each output file, so copies can be verified)."""
    import json

    folder_path = Path(folder)
    child_env = {**os.environ, **env}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=cwd, env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    with open(attempts_file, "a") as fh:  # the driver marks a killed attempt's MLflow run from this
        fh.write(f"{proc.pid} {os.getpid()} {socket.gethostname()}\n")
    _, err = proc.communicate()
    metrics_file = folder_path / "metrics.json"
    outputs = folder_path / "outputs"
    from .lineage import file_sha256
    shas = {p.relative_to(folder_path).as_posix(): file_sha256(p) for p in sorted(outputs.rglob("*")) if p.is_file()} \
        if proc.returncode == 0 and outputs.is_dir() else {}
    from .protocol import Staging
    run_id_file = Staging(folder_path).run_id
    node = ""
    try:
        import ray
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        pass
    return {"returncode": proc.returncode, "error": (err.strip().splitlines() or ["failed"])[-1] if proc.returncode else "",
            "metrics": json.loads(metrics_file.read_text()) if proc.returncode == 0 and metrics_file.is_file() else {},
            "outputs": shas, "run_id": run_id_file.read_text().strip() if run_id_file.is_file() else "",
            "node": node, "host": socket.gethostname(), "seconds": round(time.perf_counter() - started, 2)}


def submit(engine: Engine, tasks: list[dict], num_cpus: float, num_gpus: float, jobs: int, on_done=None,
           fresh_workers: bool = False) -> list[dict]:
    """Run every task (`run_variant`'s keyword arguments) on the engine; one result per task, in order. A task whose
    worker died twice comes back as {"returncode": None, "error": ...}. `on_done(index, result)` as each finishes.
    Ray runs as many at once as the resources allow; local processes, `jobs` at once."""
    if engine.kind == "ray":
        import ray
        from ray.exceptions import RayError

        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1,
                            **({"max_calls": 1} if fresh_workers else {}))(run_variant)
        refs = [remote.remote(**t) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                results[i] = ray.get(done[0])
            except RayError as err:
                text = str(err).strip().splitlines()
                results[i] = {"returncode": None, "error": f"{type(err).__name__} after a retry: "
                              f"{next((ln for ln in text if 'died' in ln or 'killed' in ln.lower()), text[0] if text else '')}"[:300],
                              "metrics": {}, "outputs": {}, "run_id": "", "node": "", "host": "", "seconds": 0.0}
            if on_done:
                on_done(i, results[i])
        return results
    from concurrent.futures import ThreadPoolExecutor, as_completed
    results = [None] * len(tasks)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_variant, **t): i for i, t in enumerate(tasks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_done:
                on_done(futures[future], results[futures[future]])
    return results
