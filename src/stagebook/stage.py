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
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import lineage as _lineage
from .project import find_root
from .protocol import PARAMS_VAR, RUN_DIR_VAR, STAGE_VAR, TRACKED_VAR, VARIANT_VAR, ChildStaging, Staging


@dataclass
class Context:
    root: Path
    name: str | None
    run_dir: Path
    lineage: dict = field(default_factory=dict)

    @property
    def staging(self) -> Staging:
        return Staging(self.run_dir)

    @property
    def interactive(self) -> bool:
        "True when a person runs the notebook by hand rather than through `stagebook run`."
        return self.name is None

    @property
    def variant(self) -> bool:
        "True inside one variant of a sweep (so a notebook does not start a sweep of its own)."
        return bool(os.environ.get(VARIANT_VAR))


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


def under_nbdev_test() -> bool:
    "True while `nbdev-test` executes the notebook (it sets IN_TEST): cells flagged `sealed` are skipped there."
    return bool(os.environ.get("IN_TEST")) and not os.environ.get(STAGE_VAR)


def params() -> dict:
    "The effective params of this run (params file plus overrides), as the runner passed them; {} when run by hand."
    return json.loads(os.environ.get(PARAMS_VAR) or "{}")


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


def _merge_json(path: Path, values: dict) -> dict:
    "Add finite numbers to the JSON mapping at `path` (created when missing); ints stay ints."
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in values.items():
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r} is {number}; record only finite numbers")
        recorded[key] = int(value) if isinstance(value, numbers.Integral) else number
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2, sort_keys=True))
    return recorded


def _write_series(path: Path, key: str, values) -> None:
    "One curve (e.g. loss per epoch): MLflow shows it as a metric with one step per value."
    series = json.loads(path.read_text()) if path.is_file() else {}
    series[key] = [float(v) for v in values]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(series))


def log_metrics(values: dict) -> dict:
    "Record numeric results of this stage; they become `metrics/NN_name.json` and MLflow metrics."
    return _merge_json(context().staging.metrics, values)


def log_headline(**numbers) -> dict:
    """The few numbers a reader compares first: `metrics/headline/NN_name.json`, what `dvc metrics show` and `dvc exp
    show` tabulate. Short names shared across stages (`items`, `valid_acc`, `test_acc`) keep that table within 120
    columns; every number still belongs in `log_metrics` too."""
    return _merge_json(context().staging.headline, numbers)


def log_model(path: str | Path, role: str = "produced") -> str:
    """Name the model this run `produced` (trained and saved) or `used` (loaded to predict); returns its sha256.

    The hash goes in the run's lineage (MLflow tags, `lineage/NN.json`, the PDF), which is how `stagebook submit`
    and the sealed stage trace a model back to the run that made it. Give the path where the file was written
    (`stage.output_path(...)` for a model this stage produces)."""
    from .lineage import file_sha256
    if role not in ("produced", "used"):
        raise ValueError(f"log_model(role={role!r}): use 'produced' or 'used'")
    sha = file_sha256(Path(path))
    record = context().staging.model
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"sha256": sha, "role": role}))
    return sha


class StageEnded(Exception):
    "Raised by `stage.end`: the runner counts the run a success and keeps what the notebook recorded so far."


def end(reason: str) -> None:
    """End the stage here, successfully, because the rest does not apply (e.g. no model submitted for the sealed
    test). The runner renders the report with `reason` and promotes the outputs; later cells do not run."""
    staging = context().staging
    staging.ended.parent.mkdir(parents=True, exist_ok=True)
    staging.ended.write_text(reason)
    raise StageEnded(reason)


def notice(text: str) -> None:
    """Something the person who ran the stage must see (a split that misses its targets, say): printed here, and
    repeated by `stagebook run` at the terminal after the run, whatever the notebook's output shows."""
    line = " ".join(str(text).split())
    print(f"stagebook: {line}")
    staging = context().staging
    if staging is not None and staging.dir.is_dir():
        with open(staging.notices, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def progress(text: str) -> None:
    """How far the stage has got (an epoch, a variant, images audited): one line in the staging folder, which
    `stagebook run` shows at a terminal as it changes. Does nothing outside `stagebook run`, and never fails a run."""
    run_dir = os.environ.get(RUN_DIR_VAR)
    if not run_dir or not os.environ.get(STAGE_VAR):
        return
    try:
        Staging(Path(run_dir)).progress.write_text(" ".join(str(text).split())[:200], encoding="utf-8")
    except OSError:
        pass


def log_metric(key: str, value) -> None:
    log_metrics({key: value})


def log_series(key: str, values) -> None:
    "Record a curve (one value per epoch or step) on the stage's MLflow run."
    _write_series(context().staging.series, key, values)


def _save_figure(fig, folder: Path, name: str, dpi: int) -> Path:
    "The PNG, and beside it its size and smallest text, so a report can print every text at 7 pt or more."
    from matplotlib.text import Text

    path = folder / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, as saved (plus savefig's 0.1 in pad)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    path.with_suffix(".json").write_text(json.dumps({"width_in": round(box.width + 0.2, 3),
                                                     "min_font_pt": min(sizes, default=10.0)}))
    return path


def log_figure(fig, name: str) -> Path:
    "Save a matplotlib figure as `figures/<name>.png` of this run (for MLflow and the stage's PDF)."
    return _save_figure(fig, context().staging.figures, name, 150)


def log_table(df, name: str) -> Path:
    "Save a pandas table as `tables/<name>.csv` of this run (for MLflow and the stage's PDF)."
    path = context().staging.tables / f"{Path(name).stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def output_path(relative: str | Path) -> Path:
    """Where to write a stage output that belongs at `relative` under the project root (e.g. `models/model.pth`).

    The file is written into the run's staging folder and moved into place only when the whole stage succeeds, so
    a failure half-way never leaves a new checkpoint beside an old model. Sweep variants keep theirs in their folder.
    """
    relative = Path(relative)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"output path {relative} must be relative to the project root, inside it")
    path = context().staging.outputs / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ChildRun:
    "A nested MLflow run inside the stage's run: one baseline model, one tuning phase. Written as files, logged by the runner."
    name: str
    dir: Path

    @property
    def files(self) -> ChildStaging:
        return ChildStaging(self.dir)

    def log_params(self, values: dict) -> None:
        path = self.files.params
        params = json.loads(path.read_text()) if path.is_file() else {}
        params.update({k: str(v) for k, v in values.items()})
        path.write_text(json.dumps(params, indent=2, sort_keys=True))

    def log_metrics(self, values: dict) -> dict:
        return _merge_json(self.files.metrics, values)

    def log_series(self, key: str, values) -> None:
        _write_series(self.files.series, key, values)

    def log_figure(self, fig, name: str) -> Path:
        return _save_figure(fig, self.files.artifacts, name, 120)


@contextmanager
def child_run(name: str, params: dict | None = None):
    "`with stage.child_run(name, params) as run:` records a nested run, logged as soon as the block ends; an exception marks it FAILED."
    children = context().staging.children
    children.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    folder = children / f"{len(list(children.iterdir())):02d}_{slug}"
    folder.mkdir()
    run = ChildRun(name, folder)
    run.files.name.write_text(name)
    run.log_params(params or {})
    run.files.status.write_text("RUNNING")
    progress("")  # a new phase: the last one's progress no longer applies
    try:
        yield run
    except BaseException:
        run.files.status.write_text("FAILED")
        raise
    run.files.status.write_text("FINISHED")
    progress("")  # the phase is over; its last epoch is not the stage's progress any more


def run_id(timeout: float = 60.0) -> str | None:
    "This stage's MLflow run id (None when untracked or interactive); sweeps started here nest under it."
    path = context().staging.run_id
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if context().interactive or not os.environ.get(TRACKED_VAR) or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return path.read_text().strip() or None
