"""What a stage notebook calls: find the project, fix seeds, and record metrics, figures and tables for the runner.

Under `stagebook run` the runner's context arrives in environment variables and everything recorded here lands in
the run's staging folder, which the runner promotes and logs to MLflow only when the notebook succeeds. Run by hand
(JupyterLab, Colab) the same calls write to `reports/.scratch/` so nothing tracked is touched.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import lineage as _lineage
from .project import find_root

STAGE_VAR, RUN_DIR_VAR = "STAGEBOOK_STAGE", "STAGEBOOK_RUN_DIR"


@dataclass
class Context:
    root: Path
    name: str | None
    run_dir: Path
    lineage: dict = field(default_factory=dict)

    @property
    def interactive(self) -> bool:
        "True when a person runs the notebook by hand rather than through `stagebook run`."
        return self.name is None


def context() -> Context:
    root = find_root()
    name = os.environ.get(STAGE_VAR) or None
    run_dir = Path(os.environ[RUN_DIR_VAR]) if os.environ.get(RUN_DIR_VAR) else root / "reports" / ".scratch"
    return Context(root, name, run_dir, _lineage.current())


def init(seed: int | None = None) -> Context:
    "Enter the project root (so params' paths mean the same everywhere) and fix every seed when one is given."
    ctx = context()
    os.chdir(ctx.root)
    if seed is not None:
        seed_everything(seed)
    if ctx.interactive:
        print(f"stagebook: interactive run; records go to {ctx.run_dir.relative_to(ctx.root)} (untracked)")
    return ctx


def seed_everything(seed: int) -> None:
    "Python, NumPy and torch (if imported) from one seed."
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    import numpy as np
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def _metrics_path() -> Path:
    return context().run_dir / "metrics.json"


def log_metrics(values: dict) -> dict:
    "Record numeric results of this stage; they become `metrics/NN_name.json` and MLflow metrics."
    path = _metrics_path()
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in values.items():
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r} is {number}; record only finite numbers")
        recorded[key] = int(value) if isinstance(value, numbers.Integral) else number
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2, sort_keys=True))
    return recorded


def log_metric(key: str, value) -> None:
    log_metrics({key: value})


def log_figure(fig, name: str) -> Path:
    "Save a matplotlib figure as `figures/<name>.png` of this run (for MLflow and the stage's PDF)."
    path = context().run_dir / "figures" / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def log_table(df, name: str) -> Path:
    "Save a pandas table as `tables/<name>.csv` of this run (for MLflow and the stage's PDF)."
    path = context().run_dir / "tables" / f"{Path(name).stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
