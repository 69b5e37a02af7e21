"""Benchmarks for the pipeline's overheads, each against a bare baseline measured in the same run.

    make bench            (or: .venv/bin/python bench/run.py [--repeats N])

1. `stagebook run 02_baseline` against bare `papermill` executing the same notebook with the same params file
   (target: ratio <= 1.10). The difference is stagebook's own cost: lineage, MLflow run, promotion of outputs.
2. A no-op `dvc repro` against the full first `dvc repro` of the pipeline (target: ratio <= 0.03).

Runs in a temporary copy of the project's tracked files, so the working tree and its MLflow store are untouched.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "MLFLOW_DISABLE_TELEMETRY": "true", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
       "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: `{' '.join(cmd)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench copy"]):
        subprocess.run(["git", *args], cwd=dest, env=ENV, check=True, capture_output=True)
    return dest


def row(name: str, ours: float, base: float, target: float) -> dict:
    ratio = ours / base
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(f"{name:<44} {ours:8.2f} s {base:8.2f} s {ratio:7.3f} {'<= ' + str(target):>8}  {verdict}")
    return {"name": name, "ours_s": ours, "baseline_s": base, "ratio": ratio, "target": target, "ok": ratio <= target}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="alternating repetitions of each timed command")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="stagebook-bench-") as tmp:
        root = copy_project(Path(tmp) / "project")
        print("bench: full first `dvc repro` of the pipeline (a few minutes) ...", flush=True)
        full = timed([str(BIN / "dvc"), "repro"], root)
        noop = statistics.median(timed([str(BIN / "dvc"), "repro"], root) for _ in range(args.repeats))

        notebook, params = "nbs/02_baseline.ipynb", "params/02_baseline.yaml"
        ours, bare = [], []
        for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits both alike
            ours.append(timed([str(BIN / "stagebook"), "run", "02_baseline"], root))
            bare.append(timed([str(BIN / "papermill"), notebook, str(Path(tmp) / "bare.ipynb"), "-f", params,
                               "--cwd", str(root), "--no-progress-bar", "-k", "python3"], root))

    print(f"\n{'measure':<44} {'ours':>10} {'baseline':>10} {'ratio':>7} {'target':>8}")
    results = [row("stagebook run 02 vs bare papermill (median)", statistics.median(ours), statistics.median(bare), 1.10),
               row("no-op dvc repro vs full dvc repro", noop, full, 0.03)]
    print(f"\nsamples: stagebook run {[round(t, 2) for t in ours]}, papermill {[round(t, 2) for t in bare]}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"repeats": args.repeats, "results": results,
                                                 "samples": {"stagebook_run": ours, "papermill": bare}}, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
