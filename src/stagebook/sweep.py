"""A grid or random search over a stage's params: each variant one papermill run, a Ray task (`stagebook.cluster`).

Each variant is `stagebook run STAGE --set ...` in its own process, writing only into its own folder under the
sweep (never the stage's outputs), and is recorded as an MLflow run nested under the sweep's parent run. Each
declares its CPUs (the machine's cores shared out between `jobs` variants at once, unless `cpus_per_variant` says)
and GPUs, and its torch threads match its CPUs so parallel variants do not fight over cores. A variant whose worker
died is retried once; one that still fails is a row with its reason, in the summary and in MLflow, and the sweep
goes on. The best variant's output files are brought back to this machine and checked against the sha256 its node
computed (fetched from its MLflow run when the node's disk is not this one's).
"""
from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import yaml

from . import runlock
from .cpus import available as available_cpus, threads as thread_count
from .errors import StagebookError
from .params import load_params, parse_overrides
from .project import find_root, resolve_stage
from .protocol import OWNER_PID_VAR

PROGRESS_FORMAT = "stagebook: sweep {name} {status} ({done}/{total}){metric} on {where}, {seconds:.1f} s"


def parse_grid(pairs: list[str], source: Path, known: dict) -> dict[str, list]:
    "`['lr=0.01,0.03', 'augment={rotate: 5},{rotate: 10}']` -> {'lr': [0.01, 0.03], ...}; keys must exist in `source`."
    grid = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise StagebookError(f"sweep {pair!r}: expected key=v1,v2,... e.g. weight_decay=0.01,0.1.")
        try:
            values = yaml.safe_load(f"[{raw}]")
        except yaml.YAMLError:
            raise StagebookError(f"sweep {pair!r}: values must be comma-separated YAML, e.g. lr=0.01,0.03 or"
                                 " scale=[0.9,1.1],[0.8,1.2].") from None
        grid[key] = [parse_overrides([f"{key}={_text(v)}"], known, source)[key] for v in values]
    return grid


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def as_overrides(params: dict, exclude=()) -> list[str]:
    "`{'lr': 0.01, 'augment': {...}}` -> `['lr=0.01', 'augment={...}']`: a run's params, to pass on to its variants."
    return [f"{k}={_text(v)}" for k, v in params.items() if k not in set(exclude)]


def variants(grid: dict[str, list], samples: int | None = None, seed: int = 0) -> list[dict]:
    "Every combination of the grid in order, or `samples` of them drawn without replacement (random search)."
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    if samples is not None and samples < len(combos):
        combos = random.Random(seed).sample(combos, samples)
    return combos


def run_sweep(stage_ref: str, grid: dict[str, list], fixed: list[str] = (), jobs: int = 2, samples: int | None = None,
              seed: int = 0, root: Path | None = None, out_dir: Path | None = None, parent_run_id: str | None = None,
              track: bool = True, metric: str | None = None, maximize: bool = True, backend: str = "auto",
              address: str | None = None, cpus_per_variant: float | None = None, gpus_per_variant: float | None = None,
              timeout: int | None = None, progress: bool | None = None, fresh_workers: bool = False):
    """Run every variant of `grid` (plus the `fixed` key=value overrides) and return the summary table.

    Without `parent_run_id` a parent MLflow run named "<stage> sweep" is created, so the variants nest under it.
    `backend` is auto (Ray, else local processes), ray or local; `address` (or RAY_ADDRESS) names a Ray cluster.
    `timeout` limits each notebook cell of a variant (papermill's execution timeout), in seconds. `fresh_workers`:
    a new Ray worker per variant (`max_calls=1`) besides the variant's own child process.
    """
    root = (root or find_root()).resolve()
    stage = resolve_stage(root, stage_ref)
    if jobs < 1 or (samples is not None and samples < 1):
        raise StagebookError(f"sweep: --jobs {jobs} / --samples {samples}: both must be at least 1.")
    if backend not in ("auto", "ray", "local"):
        raise StagebookError(f"sweep --backend {backend!r}: expected auto, ray or local.")
    combos = variants(grid, samples, seed)
    if not combos:
        raise StagebookError("sweep: nothing to run; give at least one key=v1,v2 pair.")
    from .execute import check_params
    defaults = load_params(stage.params_file)
    fixed_values = parse_overrides(list(fixed), defaults, stage.params_file)
    for combo in combos:  # every variant's params are checked before the first one starts
        check_params(stage, {**defaults, **fixed_values, **combo}, {*fixed_values, *combo})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir) if out_dir else root / "reports" / "sweeps" / stage.name / stamp
    out_dir.mkdir(parents=True, exist_ok=True)

    with ExitStack() as held:
        parent = None
        if track and parent_run_id is None:  # a sweep of its own, not one inside a stage run (which holds its lock)
            runlock.reap_dead(root)
            held.enter_context(runlock.holding_sweep(root, stage.name))
            parent = _parent_run(root, stage, grid, list(fixed), samples)
            parent_run_id = parent.wait_started()

        import pandas as pd

        from . import cluster

        jobs = max(1, min(jobs, len(combos)))
        engine = cluster.start(address, backend)
        cpus = cpus_per_variant or max(1, available_cpus() // jobs)
        from .device import gpu_names
        gpus = len(gpu_names())  # several GPUs: a GPU per variant; one GPU: shared; none: none
        gpu_share = gpus_per_variant if gpus_per_variant is not None else (1.0 if gpus > 1 else 1.0 / jobs if gpus else 0.0)
        # declared CPUs give as many threads; otherwise this process's share, so an OMP_NUM_THREADS set for the sweep
        # caps its variants as it caps stage 04's own search
        threads = str(max(1, int(cpus) if cpus_per_variant else thread_count() // jobs))
        tasks = []
        for index, combo in enumerate(combos):
            name = f"v{index:02d}"
            sets = [*fixed, *as_overrides(combo)]
            cmd = ["-m", "stagebook.cli", "run", stage.name, "--variant-dir", str(out_dir / name),
                   "--run-name", f"{stage.name} {name}", *(["--parent-run", parent_run_id] if parent_run_id else []),
                   *(["--timeout", str(timeout)] if timeout else []),
                   *([] if track else ["--no-track"]), *itertools.chain.from_iterable(("--set", s) for s in sets)]
            env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                   OWNER_PID_VAR: os.environ.get(OWNER_PID_VAR) or str(os.getpid()),  # the stage run's or this sweep's
                   **{k: os.environ[k] for k in _PASSED_ON if k in os.environ},
                   **({"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus > 1 and engine.kind == "local" else {}),
                   "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
            tasks.append({"cmd": cmd, "cwd": str(root), "env": env, "folder": str(out_dir / name),
                          "attempts_file": str(out_dir / f"{name}.attempts")})
        from . import warmkernel
        if tasks:  # the variants' kernels fork from it once it is up, on the pool or on local Ray workers alike
            warmkernel.start_in_background({**os.environ, **tasks[0]["env"]}, str(root))
        show = sys.stderr.isatty() if progress is None else progress
        if show:
            print(f"stagebook: sweep of {len(combos)} variants on {engine.describe()}", file=sys.stderr, flush=True)
        finished = []
        started = time.perf_counter()

        def done(index: int, result: dict) -> None:
            finished.append(index)
            if show:
                value = result["metrics"].get(metric) if metric else None
                print(PROGRESS_FORMAT.format(name=f"v{index:02d}", status="done" if result["returncode"] == 0 else "FAILED",
                                             done=len(finished), total=len(combos),
                                             metric=f" {metric}={value:.4g}" if isinstance(value, (int, float)) else "",
                                             where=result.get("host") or "?", seconds=result.get("seconds", 0.0)),
                      file=sys.stderr, flush=True)

        try:
            results = cluster.submit(engine, tasks, cpus, gpu_share, jobs, done, fresh_workers)
        finally:
            cluster.stop(engine)
        rows = []
        for index, (combo, result) in enumerate(zip(combos, results)):
            ok = result["returncode"] == 0
            row = {"variant": f"v{index:02d}", **{k: _text(v) if isinstance(v, (list, dict)) else v for k, v in combo.items()},
                   "status": "ok" if ok else "failed", "seconds": result["seconds"], "node": result["host"],
                   "node_id": result["node"][:12],
                   "attempts": _attempts(out_dir / f"v{index:02d}.attempts")}
            row.update({f"metric_{k}" if k in row or k == "error" else k: v for k, v in result["metrics"].items()})
            rows.append({**row, "error": result["error"], "run_id": result["run_id"], "_outputs": result["outputs"]})
        summary = pd.DataFrame(rows)
        summary.attrs.update(wall_seconds=time.perf_counter() - started, jobs=jobs, engine=engine.describe(),
                             engine_start_seconds=engine.start_seconds)
        if metric and metric in summary:
            summary = summary.sort_values(metric, ascending=not maximize, kind="stable", na_position="last")
        lost = _mark_lost(root, stage.name, summary, out_dir) if track else 0
        ok = summary[summary.status == "ok"]
        if len(ok) and metric and metric in ok:
            best = ok.iloc[0]
            bring_back(root, out_dir, best.variant, best.run_id, best["_outputs"])  # the winner's files, here and verified
        outputs = summary.pop("_outputs")
        summary.attrs["outputs"] = dict(zip(summary.variant, outputs))
        summary.to_csv(out_dir / "summary.csv", index=False)
        if parent is not None:
            best = {f"best_{metric}": float(ok[metric].iloc[0])} if metric and metric in ok and len(ok) else {}
            parent.finish("FINISHED" if len(ok) == len(summary) else "FAILED",
                          {"variants": len(summary), "failed": int((summary.status != "ok").sum()), "lost": lost,
                           "wall_seconds": summary.attrs["wall_seconds"], "engine_start_seconds": engine.start_seconds,
                           **best}, files=[out_dir / "summary.csv"],
                          tags={"stagebook.engine": engine.describe(),
                                **({"stagebook.failed_variants": "; ".join(f"{r.variant}: {r.error}" for r in
                                                                           summary[summary.status != "ok"].itertuples())[:5000]}
                                   if len(ok) < len(summary) else {})})
        return summary


_PASSED_ON = ("STAGEBOOK_TRACKING_URI", "STAGEBOOK_ARTIFACT_ROOT", "PYTHONPATH", "MLFLOW_DISABLE_TELEMETRY",
              "DVC_NO_ANALYTICS", "PYDEVD_DISABLE_FILE_VALIDATION")  # what a variant on another node needs from here


def _attempts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _mark_lost(root: Path, stage: str, summary, out_dir: Path) -> int:
    """Every attempt whose process died mid-run (its worker killed) leaves a RUNNING MLflow run: mark it KILLED with
    the reason, so no ghost stays. Returns how many variants were lost for good (failed after their retry)."""
    from .runlock import alive, mark_killed

    for path in out_dir.glob("v*.attempts"):
        for line in path.read_text().splitlines():
            pid = line.split()[0]
            if pid.isdigit() and not alive(int(pid)):
                mark_killed(root, stage, int(pid))
    return int(summary.error.str.contains("after a retry", regex=False).sum())


def bring_back(root: Path, out_dir: Path, variant: str, run_id: str, outputs: dict[str, str]) -> list[Path]:
    """The variant's output files (`outputs`: path in its folder -> sha256 its node computed) in its folder on this
    machine, each checked; a file missing here (the variant ran on another machine) or different is fetched from the
    variant's MLflow run, and refused if its sha256 still differs."""
    from .lineage import file_sha256

    folder = out_dir / variant
    files = []
    for relative, sha in outputs.items():
        local = folder / relative
        if not local.is_file() or file_sha256(local) != sha:
            if not run_id:
                raise StagebookError(f"sweep {variant}: {relative} is not on this machine and the variant was not"
                                     " tracked; run the sweep with tracking (an MLflow server) or on a shared disk.")
            _download(root, run_id, relative, local)
            if file_sha256(local) != sha:
                local.unlink()
                raise StagebookError(f"sweep {variant}: {relative} fetched from MLflow run {run_id} is not the file its"
                                     f" node wrote (sha256 {sha[:16]}); not used.")
        files.append(local)
    return files


def _download(root: Path, run_id: str, relative: str, local: Path) -> None:
    "One artifact of a run, copied to `local`."
    import shutil

    from .tracking import download
    got = download(root, run_id=run_id, path=relative)
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(got, local)


def _parent_run(root: Path, stage, grid: dict, fixed: list[str], samples: int | None):
    from . import lineage as lineage_mod
    from .params import params_hash
    from .tracking import Tracker

    spec = {"grid": json.dumps(grid), "fixed": json.dumps(fixed), "samples": samples}
    load_params(stage.params_file)  # a broken params file stops the sweep before any variant starts
    tracker = Tracker(root, stage.name, spec, lineage_mod.compute(root, params_hash(spec)), run_name=f"{stage.name} sweep")
    tracker.start_in_background()
    return tracker
