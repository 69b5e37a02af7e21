"""What the end-to-end test modules share: a project rendered by `stagebook new` from this template and run once end
to end through `dvc repro` on a small subset of the embedded digits (`built_pipeline`, about 2 minutes), and the same
project after a model was submitted and evaluated on the sealed test (`built_evaluated`). Each is made once per test
session, by whichever pytest-xdist worker asks first while the others wait, and each module works on copies of its own
(`copy_project`): the modules run side by side, none pays for the runs twice, none sees another's leftovers."""
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, git

SMALL = {"embed_digits": {"per_class": 15},
         "02_baseline": {"forest_trees": 50},
         "04_tuning": {"epochs": 10, "overfit_epochs": 10, "train_accuracy_target": 0.8, "early_stopping_patience": 3,
                       "search_grid": {"dropout": [0.1, 0.3]}},
         "06_sealed_test": {"latency_repeats": 20}}


def set_params(root: Path, stage: str, **values):
    path = root / "params" / f"{stage}.yaml"
    params = yaml.safe_load(path.read_text())
    params.update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_repro(root: Path, ok: bool = True) -> str:
    done = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def stagebook(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["stagebook", *args], cwd=root, capture_output=True, text=True)


def all_runs(root: Path) -> list:
    from stagebook.project import settings
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(settings(root)["experiment"])
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


def stage_runs(root: Path) -> list:
    "Top-level runs: one per stage execution (nested phase, baseline and sweep runs left out)."
    return [r for r in all_runs(root) if "mlflow.parentRunId" not in r.data.tags]


def children(root: Path, run) -> list:
    return [r for r in all_runs(root) if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]


def copy_project(src: Path, dest: Path) -> Path:
    "An independent copy of a run project: its own git, DVC cache, MLflow store and artifact folder."
    import sqlite3
    shutil.copytree(src, dest, symlinks=True)
    old, new = (src / "mlartifacts").resolve().as_uri(), (dest / "mlartifacts").resolve().as_uri()
    with sqlite3.connect(dest / "mlflow.db") as db:  # MLflow stores the artifact root as an absolute URI
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    return dest


def ledger_entries(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "data/test_ledger.jsonl").read_text().splitlines()]


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def challenger(root: Path, message: str, **params) -> None:
    "Train with `params`, submit the model and evaluate it on the sealed test (one more read)."
    set_params(root, "04_tuning", **params)
    git(root, "commit", "-qam", message)
    dvc_repro(root)
    assert stagebook(root, "submit", "--by", "e2e", "--reason", message).returncode == 0
    dvc_repro(root)


@contextmanager
def pythonpath(root: Path):
    "The project's own package importable in the processes started meanwhile, as its `make setup` installs it."
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(root / "src")
    try:
        yield root
    finally:
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


def module_copy(source: Path, dest: Path):
    "A module's own copy of a shared project, its package importable while the module runs (for a fixture to yield from)."
    root = copy_project(source, dest)
    with pythonpath(root):
        yield root


def copy_for_test(source: Path, dest: Path, monkeypatch) -> Path:
    "A test's own copy of a project, its package importable until the test ends."
    root = copy_project(source, dest)
    monkeypatch.setenv("PYTHONPATH", str(root / "src"))
    return root


def _shared(tmp_path_factory, name: str, build) -> Path:
    "`build(folder)` once per session, under a lock all xdist workers see; later callers get the same folder."
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / f"shared-{name}"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder / "project")
            (folder / ".complete").touch()
    return folder / "project"


def built_pipeline(tmp_path_factory) -> Path:
    "The rendered project, run once end to end on the subset. Read-only: copy it (`copy_project`) to use it."
    def build(root: Path) -> None:
        from stagebook.template import new
        new(root, "Digits e2e", source=str(REPO))
        for stage, values in SMALL.items():
            set_params(root, stage, **values)
        git(root, "commit", "-qam", "a small subset for the test")
        with pythonpath(root):
            dvc_repro(root)
    return _shared(tmp_path_factory, "pipeline", build)


def built_evaluated(tmp_path_factory) -> Path:
    """The run pipeline after a submission: a first `stagebook submit` is refused when the CNN does not beat the bar
    (on 30 validation items a classical baseline usually scores 1.0); with input-independent baselines only, stage
    04's model beats the bar, is submitted, and `dvc repro` evaluates it on the sealed test. Read-only, as above."""
    pipeline = built_pipeline(tmp_path_factory)

    def build(root: Path) -> None:
        copy_project(pipeline, root)
        with pythonpath(root):
            tuned = json.loads((root / "metrics/04_tuning.json").read_text())
            first = stagebook(root, "submit", "--by", "e2e", "--reason", "too early")
            bar = tuned["best_baseline_valid_accuracy"]
            if tuned["valid_accuracy"] <= bar:  # the usual case on 30 validation items: a classical baseline scores 1.0
                assert first.returncode == 1 and f"does not beat the stage-02 bar {bar:.4f}" in first.stderr, first.stderr
            else:
                assert first.returncode == 0, first.stderr
            set_params(root, "02_baseline", models=["majority_class", "class_prior"])
            set_params(root, "04_tuning", phases=["sanity", "one_batch", "regularise"])  # quicker: no finder, no search
            git(root, "commit", "-qam", "input-independent baselines only")
            dvc_repro(root)
            submitted = stagebook(root, "submit", "--by", "e2e", "--reason", "beats the bar")
            assert submitted.returncode == 0, submitted.stderr
            git(root, "add", "-A", "data/submission.json", "models/submitted")
            git(root, "commit", "-qm", "submit the model")
            dvc_repro(root)
    return _shared(tmp_path_factory, "evaluated", build)
