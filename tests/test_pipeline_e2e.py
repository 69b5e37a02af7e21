"""The whole template pipeline, through `dvc repro`, on a small subset of the embedded digits (about 2-3 minutes)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, git

pytestmark = pytest.mark.e2e
SMALL = {"embed_digits": {"per_class": 15},
         "04_tuning": {"epochs": 12, "train_accuracy_target": 0.8},
         "06_sealed_test": {"bootstrap": 200, "latency_repeats": 20}}


def _set_params(root: Path, stage: str, **values):
    path = root / "params" / f"{stage}.yaml"
    params = yaml.safe_load(path.read_text())
    params.update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _dvc_repro(root: Path) -> str:
    done = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    "A copy of the template (tracked files only, as a clone has them) run once end to end on the subset."
    root = tmp_path_factory.mktemp("e2e") / "project"
    for rel in git(REPO, "ls-files").splitlines():
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    for stage, values in SMALL.items():
        _set_params(root, stage, **values)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "copy of the template")
    _dvc_repro(root)
    return root


def test_first_repro_runs_every_stage_once_with_lineage(pipeline: Path):
    runs = _runs(pipeline)
    stages = [r.data.tags["stagebook.stage"] for r in runs]
    assert stages == ["00_problem_page", "01_data_document", "02_baseline", "03_literature_notes", "04_tuning",
                      "05_error_analysis", "06_sealed_test"]
    head = git(pipeline, "rev-parse", "HEAD").strip()
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stagebook.code_commit"] == head
        assert run.data.tags["stagebook.code_dirty"] == "False", "the pipeline's own writes must not count as dirty code"
    data_versions = {r.data.tags["stagebook.stage"]: r.data.tags["stagebook.data_version"] for r in runs}
    assert data_versions["00_problem_page"] == "none" and data_versions["02_baseline"] != "none"
    assert len({v for k, v in data_versions.items() if k >= "02"}) == 1
    assert runs[-1].data.tags["stagebook.model_sha256"] != "none"
    assert (pipeline / "dvc.lock").is_file()


def test_outputs_and_deliverables(pipeline: Path):
    assert len(list((pipeline / "data/raw/digits").glob("*/*.png"))) == 150
    assert "Items: 150 (150 usable, 0 quarantined); classes: 10." in (pipeline / "data_doc.md").read_text()
    assert (pipeline / "models/model.pth").is_file()
    text = subprocess.run(["pdftotext", "-layout", str(pipeline / "reports/06_sealed_test.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    for words in ("Lineage", "Code commit", "Data version", "Params hash", "Model sha256", "Test accuracy",
                  "Latency per item", "Confusion matrix", "Per-class results", "precision"):
        assert words in text, words
    assert (pipeline / "reports/06_sealed_test/figures/confusion_matrix.png").is_file()


def test_second_repro_runs_nothing(pipeline: Path):
    before = len(_runs(pipeline))
    out = _dvc_repro(pipeline)
    assert "Data and pipelines are up to date." in out
    assert len(_runs(pipeline)) == before


def test_a_stage_05_param_reruns_05_and_06_only(pipeline: Path):
    before = len(_runs(pipeline))
    _set_params(pipeline, "05_error_analysis", top_losses=5)
    _dvc_repro(pipeline)
    new = [r.data.tags["stagebook.stage"] for r in _runs(pipeline)[before:]]
    assert new == ["05_error_analysis", "06_sealed_test"]
