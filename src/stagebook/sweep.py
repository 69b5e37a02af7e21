"""A grid or random search over a stage's params: each variant one papermill run, run in parallel processes.

Each variant is `stagebook run STAGE --set ...` in its own process, writing only into its own folder under the
sweep (never the stage's outputs), and is recorded as an MLflow run nested under the sweep's parent run. The torch
threads of the machine's cores are shared out between the parallel variants so they do not fight over cores.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .errors import StagebookError
from .params import load_params, parse_overrides
from .project import find_root, resolve_stage
from .protocol import Staging


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
              track: bool = True, metric: str | None = None, maximize: bool = True):
    """Run every variant of `grid` (plus the `fixed` key=value overrides) and return the summary table.

    Without `parent_run_id` a parent MLflow run named "<stage> sweep" is created, so the variants nest under it.
    """
    import pandas as pd

    root = (root or find_root()).resolve()
    stage = resolve_stage(root, stage_ref)
    if jobs < 1 or (samples is not None and samples < 1):
        raise StagebookError(f"sweep: --jobs {jobs} / --samples {samples}: both must be at least 1.")
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

    parent = None
    if track and parent_run_id is None:
        parent = _parent_run(root, stage, grid, list(fixed), samples)
        parent_run_id = parent.wait_started()

    jobs = max(1, min(jobs, len(combos)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    from .device import gpu_names
    gpus = len(gpu_names())  # several GPUs: variants take turns round the GPUs; one GPU: they share it
    started = time.perf_counter()

    def one(index_combo):
        index, combo = index_combo
        name = f"v{index:02d}"
        folder = out_dir / name
        sets = [*fixed, *as_overrides(combo)]
        cmd = [sys.executable, "-m", "stagebook.cli", "run", stage.name, "--variant-dir", str(folder),
               "--run-name", f"{stage.name} {name}", *(["--parent-run", parent_run_id] if parent_run_id else []),
               *([] if track else ["--no-track"]), *itertools.chain.from_iterable(("--set", s) for s in sets)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               **({"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus > 1 else {}),
               "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        metrics_file = Staging(folder).metrics
        metrics = json.loads(metrics_file.read_text()) if proc.returncode == 0 and metrics_file.is_file() else {}
        error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
        row = {"variant": name, **{k: _text(v) if isinstance(v, (list, dict)) else v for k, v in combo.items()},
               "status": "ok" if proc.returncode == 0 else "failed", "seconds": round(time.perf_counter() - t0, 2)}
        row.update({f"metric_{k}" if k in row or k == "error" else k: v for k, v in metrics.items()})
        return {**row, "error": error}

    with ThreadPoolExecutor(jobs) as pool:
        rows = list(pool.map(one, enumerate(combos)))
    summary = pd.DataFrame(rows)
    summary.attrs["wall_seconds"] = time.perf_counter() - started
    summary.attrs["jobs"] = jobs
    if metric and metric in summary:
        summary = summary.sort_values(metric, ascending=not maximize, kind="stable", na_position="last")
    summary.to_csv(out_dir / "summary.csv", index=False)
    if parent is not None:
        ok = summary[summary.status == "ok"]
        best = {f"best_{metric}": float(ok[metric].iloc[0])} if metric and metric in ok and len(ok) else {}
        parent.finish("FINISHED" if len(ok) == len(summary) else "FAILED",
                      {"variants": len(summary), "failed": int((summary.status != "ok").sum()),
                       "wall_seconds": summary.attrs["wall_seconds"], **best}, files=[out_dir / "summary.csv"])
    return summary


def _parent_run(root: Path, stage, grid: dict, fixed: list[str], samples: int | None):
    from . import lineage as lineage_mod
    from .params import params_hash
    from .tracking import Tracker

    spec = {"grid": json.dumps(grid), "fixed": json.dumps(fixed), "samples": samples}
    load_params(stage.params_file)  # a broken params file stops the sweep before any variant starts
    tracker = Tracker(root, stage.name, spec, lineage_mod.compute(root, params_hash(spec)), run_name=f"{stage.name} sweep")
    tracker.start_in_background()
    return tracker
