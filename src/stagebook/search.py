"""A stage's own search, run inside its kernel: each variant in a process forked from it.

`stagebook sweep` (and stage 04 with `search_backend: sweep`) runs a variant as a papermill run of the whole
notebook: a new kernel, its imports and the data loaded again, before one second of training. On a laptop that
start-up is most of a small variant's time. Here the kernel already holds the imports and the data in memory, so a
forked child trains at once. Isolation is kept where it matters:
- a variant is its own process: it shares nothing it could change with the others or with the stage;
- it is tracked as its own nested MLflow run (`stage.child_run`), its output in its own folder;
- a variant that raises fails alone, with its error in the table; a variant whose process dies (killed, out of
  memory) is started once more, then reported failed with the exit code; one that outlives `timeout` is killed.
Forking needs a POSIX system; elsewhere the variants run one after another in the kernel itself.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

import pandas as pd

from . import cpus, stage
from .startup import forking_safely
from .sweep import PROGRESS_FORMAT, variants

RESULT = "result.json"
LOG = "log.txt"


def _child(train: Callable[[dict, Path], dict], params: dict, folder: Path, threads: int) -> None:
    "In the forked process: the variant's output to its own log, its own thread count, its result to a file."
    fd = os.open(folder / LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # the kernel's streams belong to the kernel
    import torch
    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        result = {"status": "ok", **train(dict(params), folder)}
        code = 0
    except BaseException as err:  # noqa: BLE001 (a variant's failure, whatever it is, is reported, not raised)
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
        code = 1
    result["seconds"] = time.perf_counter() - started
    (folder / RESULT).write_text(json.dumps(result, default=float))
    sys.stdout.flush()
    os._exit(code)  # not the kernel's exit handlers: they belong to the parent


def run_inline(train: Callable[[dict, Path], dict], grid: dict[str, list], out_dir: Path, jobs: int = 2,
               samples: int | None = None, seed: int = 0, metric: str | None = None, maximize: bool = True,
               timeout: float | None = None, retries: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run `train(params, folder)` for every variant of `grid`, `jobs` at a time, each in a process forked from this
    one; `train` returns the variant's numbers (a dict). Returns the table, best `metric` first, with status, error,
    seconds and attempts per variant (attrs: wall_seconds, jobs, engine)."""
    combos = variants(grid, samples, seed)
    out_dir = Path(out_dir)
    names = [f"v{k:02d}" for k in range(len(combos))]
    for name in names:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(jobs, len(combos)))
    threads = max(1, cpus.threads() // jobs)
    forking = os.name == "posix"
    context = get_context("fork") if forking else None
    pending = list(range(len(combos)))
    running: dict = {}              # sentinel -> (index, process, started)
    attempts = [0] * len(combos)
    results: dict[int, dict] = {}
    started_all = time.perf_counter()

    def finish(index: int, result: dict) -> None:
        results[index] = result
        stage.progress(f"search: {len(results)}/{len(combos)} variants finished, {len(running)} running")
        if progress:
            value = result.get(metric) if metric else None
            print(PROGRESS_FORMAT.format(name=names[index], status="done" if result["status"] == "ok" else "FAILED",
                                         done=len(results), total=len(combos),
                                         metric=f" {metric}={value:.4g}" if isinstance(value, (int, float)) else "",
                                         where="this kernel (forked)", seconds=result.get("seconds", 0.0)),
                  flush=True)

    try:
        while pending or running:
            while pending and len(running) < jobs:
                index = pending.pop(0)
                attempts[index] += 1
                folder = out_dir / names[index]
                (folder / RESULT).unlink(missing_ok=True)
                if not forking:  # no fork: in this process, one after another
                    start = time.perf_counter()
                    try:
                        finish(index, {"status": "ok", **train(dict(combos[index]), folder),
                                       "seconds": time.perf_counter() - start})
                    except Exception as err:  # noqa: BLE001
                        finish(index, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                       "seconds": time.perf_counter() - start})
                    continue
                process = context.Process(target=_child, args=(train, combos[index], folder, threads))
                with forking_safely():  # the parent's garbage is never collected in the variant
                    process.start()
                running[process.sentinel] = (index, process, time.perf_counter())
            if not running:
                continue
            for sentinel in wait(list(running), timeout=1.0):
                index, process, start = running.pop(sentinel)
                process.join()
                path = out_dir / names[index] / RESULT
                if path.is_file():  # process_seconds: from fork to exit, as this kernel saw it
                    finish(index, {**json.loads(path.read_text()), "process_seconds": time.perf_counter() - start})
                elif attempts[index] <= retries:
                    pending.insert(0, index)  # the process died before it could say anything: once more
                else:
                    finish(index, {"status": "failed", "seconds": time.perf_counter() - start,
                                   "error": f"the variant's process died (exit code {process.exitcode})"
                                            f" {attempts[index]} times; its log: {out_dir / names[index] / LOG}"})
            if timeout:
                for sentinel, (index, process, start) in list(running.items()):
                    if time.perf_counter() - start > timeout:
                        process.kill()
                        process.join()
                        running.pop(sentinel)
                        finish(index, {"status": "failed", "seconds": time.perf_counter() - start,
                                       "error": f"stopped after {timeout:g} s (timeout)"})
    finally:  # an interrupted search (the kernel stopped, an error here) leaves no variant running
        for _, process, _ in running.values():
            process.kill()
            process.join()
    rows = []
    for index, combo in enumerate(combos):
        result = dict(results[index])
        row = {"variant": names[index], **{k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                          for k, v in combo.items()},
               "status": result.pop("status"), "seconds": result.pop("seconds", 0.0), "attempts": attempts[index],
               "error": result.pop("error", "")}
        row.update({f"metric_{k}" if k in row else k: v for k, v in result.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(wall_seconds=time.perf_counter() - started_all, jobs=jobs,
                       engine=f"{jobs} process(es) forked from this kernel" if forking else "this kernel, serially")
    if metric and metric in table:
        table = table.sort_values(metric, ascending=not maximize, kind="stable", na_position="last")
    table.to_csv(out_dir / "summary.csv", index=False)
    return table
