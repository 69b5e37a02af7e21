"""The runner <-> kernel protocol, in one place.

The runner (`execute`, `tracking`, `sweep`) starts a kernel with the environment below and reads back what the
notebook API (`stage`, `report`, `seal`, `lineage`) wrote into the run's staging folder. Both sides import these
names; neither spells them out again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The environment a kernel receives from `stagebook run`.
STAGE_VAR = "STAGEBOOK_STAGE"  # the stage's name, e.g. 04_tuning; unset when a person runs the notebook by hand
RUN_DIR_VAR = "STAGEBOOK_RUN_DIR"  # the staging folder below
VARIANT_VAR = "STAGEBOOK_VARIANT"  # "1" inside one variant of a sweep
PARAMS_VAR = "STAGEBOOK_PARAMS"  # the run's effective params (JSON), so a notebook can start a sweep of itself
ROOT_VAR = "STAGEBOOK_ROOT"  # the project root
TRACKED_VAR = "STAGEBOOK_TRACKED"  # "1" when an MLflow run records this one
LINEAGE_VAR = "STAGEBOOK_LINEAGE"  # the run's lineage record (JSON), computed once by the runner
REPORT_CONTEXT_VAR = "STAGEBOOK_REPORT_CONTEXT"  # what a Pweave report template may read (JSON)
OWNER_PID_VAR = "STAGEBOOK_OWNER_PID"  # the stage run that holds the lock; its sweep variants' runs carry it too


@dataclass(frozen=True)
class Staging:
    "The folder one run writes into; the runner promotes it only when the whole stage succeeds."
    dir: Path

    @property
    def metrics(self) -> Path: return self.dir / "metrics.json"  # every number (metrics/NN_name.json)

    @property
    def headline(self) -> Path: return self.dir / "headline.json"  # the few that `dvc metrics show` tabulates

    @property
    def series(self) -> Path: return self.dir / "series.json"  # curves, one value per step

    @property
    def model(self) -> Path: return self.dir / "model.json"  # the model the run produced or used: sha256, role

    @property
    def ended(self) -> Path: return self.dir / "ended.txt"  # why the notebook ended early, successfully

    @property
    def notices(self) -> Path: return self.dir / "notices.txt"  # lines the runner repeats at the terminal

    @property
    def children(self) -> Path: return self.dir / "children"  # nested runs, one folder each

    @property
    def progress(self) -> Path: return self.dir / "progress.txt"  # how far along: the runner shows it at a terminal

    @property
    def outputs(self) -> Path: return self.dir / "outputs"  # files bound for the project root (models, checkpoints)

    @property
    def figures(self) -> Path: return self.dir / "figures"

    @property
    def tables(self) -> Path: return self.dir / "tables"

    @property
    def run_id(self) -> Path: return self.dir / "mlflow_run_id"  # written once the stage's MLflow run exists

    @property
    def latex(self) -> Path: return self.dir / "latex"

    @property
    def report_pdf(self) -> Path: return self.dir / "report.pdf"

    def notebook(self, stage: str) -> Path: return self.dir / f"{stage}.ipynb"


@dataclass(frozen=True)
class ChildStaging:
    "One nested run's folder under `Staging.children`: written by `stage.child_run`, logged by the tracker."
    dir: Path

    @property
    def name(self) -> Path: return self.dir / "name"

    @property
    def params(self) -> Path: return self.dir / "params.json"

    @property
    def metrics(self) -> Path: return self.dir / "metrics.json"

    @property
    def series(self) -> Path: return self.dir / "series.json"

    @property
    def status(self) -> Path: return self.dir / "status"  # RUNNING, then FINISHED or FAILED

    @property
    def artifacts(self) -> Path: return self.dir / "artifacts"
