"""The test split is read only on purpose: `stagebook submit` names the model, the sealed stage evaluates only it, once,
within the seal's read budget, and every refusal is logged. Real stages run by papermill on a small sealed project."""
import json
from pathlib import Path

import pytest

from conftest import add_stage
from stagebook import StagebookError
from stagebook.audit import audit
from stagebook.embedded import write_digits
from stagebook.execute import run_stage
from stagebook.lineage import file_sha256
from stagebook.manifest import build_manifest
from stagebook.seal import Ledger, write_seal
from stagebook.split import split_assignments
from stagebook.submission import read_submission, submit

PAGE = """---
project: toy
primary_metric: accuracy
target: 0.5
latency_budget_ms: 5
test_reads_per_seal: 2
---
"""
TRAIN = ("from stagebook import stage\nctx = stage.init(0)",
         "path = stage.output_path('models/model.pth')\npath.write_text(f'model of quality {quality}')\n"
         "stage.log_model(path, 'produced')\n"
         "stage.log_metrics({'valid_accuracy': quality, 'best_baseline_valid_accuracy': 0.8})")
SEALED = ("from stagebook import evaluation, stage\nctx = stage.init(0)",
          "run = evaluation.open_submitted()\nif run is None:\n    stage.log_metrics({'evaluated': 0})\n"
          "    stage.end(evaluation.NOT_SUBMITTED)",
          "stage.log_model(run.model_path, 'used')\n"
          "predictions = run.predictions if run.reused else run.items[['path', 'label']].assign(predicted=run.items.label)\n"
          "run.record(predictions, {'accuracy': 1.0})\n"
          "stage.log_metrics({'evaluated': 1, 'rank': run.rank, 'budget': run.budget, 'reused': int(run.reused)})")


@pytest.fixture
def sealed_project(project: Path, monkeypatch) -> Path:
    "60 digits split and sealed, a training stage 04 and the sealed stage 06 as real notebooks."
    write_digits(project / "data" / "raw", per_class=6)
    result = audit(build_manifest("data/raw", project), project, 0.01, workers=1, progress=False)
    splits = split_assignments(result.items, {"train": 0.6, "valid": 0.2, "test": 0.2}, 0)
    splits.to_csv(project / "data" / "splits.csv", index=False)
    write_seal(project, splits)
    (project / "project_page.md").write_text(PAGE)
    add_stage(project, "04_train", "quality: 0.9\n", "quality = 0.9", *TRAIN)
    add_stage(project, "06_sealed_test", "seed: 0\n", "seed = 0", *SEALED)
    monkeypatch.chdir(project)
    monkeypatch.delenv("STAGEBOOK_STAGE", raising=False)
    return project


def _events(root: Path) -> list[str]:
    return [e["event"] for e in Ledger(root).entries()]


def _train(root: Path, quality: float) -> str:
    run_stage("04", [f"quality={quality}"], root=root, track=False)
    return file_sha256(root / "models/model.pth")


def test_with_nothing_submitted_the_sealed_stage_ends_without_a_read(sealed_project: Path):
    result = run_stage("06", root=sealed_project, track=False)
    assert result.metrics == {"evaluated": 0} and result.lineage.model_sha256 == "none"
    assert _events(sealed_project) == ["seal"]  # no read, no refusal: nothing was asked for
    executed = (sealed_project / "reports/executed/06_sealed_test.ipynb").read_text()
    assert "the stage ends here: no model has been submitted" in executed and "Traceback" not in executed


def test_a_model_that_did_not_beat_the_bar_is_refused_and_the_refusal_logged(sealed_project: Path):
    _train(sealed_project, 0.7)
    with pytest.raises(StagebookError, match=r"validation accuracy 0.7000 from 04_train does not beat the stage-02 bar 0.8000"):
        submit(sealed_project, by="ana", reason="try")
    assert _events(sealed_project) == ["seal", "refused"] and read_submission(sealed_project) is None


def test_submit_needs_a_name_a_reason_and_a_model_a_stage_produced(sealed_project: Path):
    with pytest.raises(StagebookError, match="--by NAME --reason TEXT"):
        submit(sealed_project, by="", reason="x")
    (sealed_project / "models").mkdir()
    (sealed_project / "models/model.pth").write_text("made by hand")
    with pytest.raises(StagebookError, match="is not a model any stage recorded producing"):
        submit(sealed_project, by="ana", reason="x")


def test_a_submitted_model_is_read_once_then_reused_and_its_identity_chains_to_the_training_run(sealed_project: Path):
    sha = _train(sealed_project, 0.9)
    trained = json.loads((sealed_project / "lineage/04_train.json").read_text())
    assert (trained["model_sha256"], trained["model_role"]) == (sha, "produced")
    record = submit(sealed_project, by="ana", reason="beats the bar")
    assert record["model_sha256"] == sha and (sealed_project / record["model"]).read_bytes() == \
        (sealed_project / "models/model.pth").read_bytes()
    _train(sealed_project, 0.95)  # training goes on: the submitted bytes are what 06 evaluates
    first = run_stage("06", root=sealed_project, track=False)
    assert first.metrics["evaluated"] == 1 and first.metrics["reused"] == 0 and first.metrics["rank"] == 1
    assert first.lineage.model_sha256 == sha and first.lineage.model_role == "used"
    again = run_stage("06", root=sealed_project, track=False)
    assert again.metrics["reused"] == 1 and again.metrics["rank"] == 1
    assert _events(sealed_project) == ["seal", "submit", "read", "result", "reuse"]


def test_past_the_budget_a_new_model_is_refused_until_new_test_data_is_sealed(sealed_project: Path):
    for quality in (0.9, 0.91):
        _train(sealed_project, quality)
        submit(sealed_project, by="ana", reason=f"quality {quality}")
        assert run_stage("06", root=sealed_project, track=False).metrics["budget"] == 2
    _train(sealed_project, 0.92)
    submit(sealed_project, by="ana", reason="a third")
    with pytest.raises(StagebookError, match="the read budget of this seal is spent: 2 models"):
        run_stage("06", root=sealed_project, track=False)
    assert _events(sealed_project)[-1] == "refused"
    assert _events(sealed_project).count("read") == 2


def test_a_submitted_model_whose_bytes_changed_is_refused(sealed_project: Path):
    _train(sealed_project, 0.9)
    record = submit(sealed_project, by="ana", reason="ok")
    (sealed_project / record["model"]).write_text("tampered")
    with pytest.raises(StagebookError, match="its bytes are not the submitted model's"):
        run_stage("06", root=sealed_project, track=False)
    assert _events(sealed_project)[-1] == "refused" and "read" not in _events(sealed_project)


def test_an_unreadable_lineage_file_is_named_not_a_traceback(sealed_project: Path):
    _train(sealed_project, 0.9)
    (sealed_project / "lineage/04_train.json").write_text("{not json")
    with pytest.raises(StagebookError, match=r"lineage/04_train.json: not readable JSON"):
        submit(sealed_project, by="ana", reason="x")
