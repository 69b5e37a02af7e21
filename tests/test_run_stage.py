"""`stagebook run` end to end on a toy stage: real papermill, real MLflow (SQLite), real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagebook import StagebookError
from stagebook.execute import StageFailed, run_stage
from stagebook.tracking import tracking_uri


def _runs(root: Path):
    client = MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name("demo")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def test_a_run_records_outputs_and_one_mlflow_run(toy_stage: Path):
    result = run_stage("01", ["scale=3"], root=toy_stage)
    assert result.metrics == {"score": 1.5, "count": 3}
    assert json.loads((toy_stage / "metrics" / "01_toy.json").read_text()) == {"count": 3, "score": 1.5}
    record = json.loads((toy_stage / "lineage" / "01_toy.json").read_text())
    assert record["stage"] == "01_toy" and record["code_commit"] == result.lineage.code_commit
    assert len(record["code_commit"]) == 40 and record["code_dirty"] is False
    assert (toy_stage / "reports" / "executed" / "01_toy.ipynb").is_file()
    assert (toy_stage / "reports" / "01_toy" / "figures" / "curve.png").is_file()
    assert (toy_stage / "reports" / "01_toy" / "tables" / "tiny.csv").is_file()
    assert not (toy_stage / "reports" / ".staging" / "01_toy").exists()

    [run] = _runs(toy_stage)
    assert run.info.status == "FINISHED" and run.info.run_id == result.run_id
    assert run.data.params == {"scale": "3", "fail": "False"}
    assert run.data.metrics == {"score": 1.5, "count": 3.0}
    tags = run.data.tags
    assert tags["stagebook.stage"] == "01_toy" and tags["stagebook.params_hash"] == result.lineage.params_hash
    assert tags["stagebook.code_commit"] == result.lineage.code_commit and tags["stagebook.data_version"] == "none"
    assert tags["stagebook.pid"] == str(os.getpid())  # the runner's process, so a ghost can be found after kill -9
    from stagebook import __version__
    assert tags["stagebook.stagebook_version"] == __version__ and tags["stagebook.device"] == "cpu"
    experiment = MlflowClient(tracking_uri(toy_stage)).get_experiment_by_name("demo")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    artifacts = {a.path for a in MlflowClient(tracking_uri(toy_stage)).list_artifacts(run.info.run_id)}
    assert {"01_toy.ipynb", "01_toy.json", "figures", "tables"} <= artifacts


def test_params_change_the_params_hash(toy_stage: Path):
    a = run_stage("01", ["scale=3"], root=toy_stage, track=False)
    b = run_stage("01", ["scale=4"], root=toy_stage, track=False)
    assert a.lineage.params_hash != b.lineage.params_hash and b.metrics["score"] == 2.0


def test_a_failing_notebook_marks_the_run_failed_and_keeps_earlier_outputs(toy_stage: Path):
    run_stage("01", root=toy_stage)
    before = (toy_stage / "metrics" / "01_toy.json").read_text()
    with pytest.raises(StageFailed) as err:
        run_stage("01", ["fail=true", "scale=9"], root=toy_stage)
    message = str(err.value)
    assert message.startswith("stage 01_toy failed in cell 3 of nbs/01_toy.ipynb:") and "AssertionError: asked to fail" in message
    assert "\n" not in message
    assert (toy_stage / "metrics" / "01_toy.json").read_text() == before
    assert (toy_stage / "reports" / ".failed" / "01_toy.ipynb").is_file()
    assert [r.info.status for r in _runs(toy_stage)] == ["FINISHED", "FAILED"]


def test_uncommitted_code_is_flagged_dirty(toy_stage: Path):
    (toy_stage / "params" / "01_toy.yaml").write_text("scale: 5\nfail: false\n")
    assert run_stage("01", root=toy_stage, track=False).lineage.code_dirty is True


def test_cli_prints_one_line_and_no_traceback(toy_stage: Path):
    stagebook = Path(sys.executable).parent / "stagebook"
    cases = [(["run", "01", "--set", "nope=1"], "--set nope: not a parameter"),
             (["run", "09"], "no stage notebook matches '09'"),
             (["run", "01", "--set", "fail=true", "--no-track"], "stage 01_toy failed in cell 3 of nbs/01_toy.ipynb")]
    for args, expected in cases:
        done = subprocess.run([str(stagebook), *args], cwd=toy_stage, capture_output=True, text=True)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("stagebook: error:")]
        assert len(errors) == 1 and expected in errors[0], done.stderr


def test_cli_success_names_the_stage_and_metrics(toy_stage: Path):
    stagebook = Path(sys.executable).parent / "stagebook"
    done = subprocess.run([str(stagebook), "run", "01_toy"], cwd=toy_stage, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stagebook: 01_toy done (MLflow run ") and "score=1" in done.stdout


def test_a_missing_params_file_is_refused_before_running(toy_stage: Path):
    (toy_stage / "params" / "01_toy.yaml").unlink()
    with pytest.raises(StagebookError, match="params file missing"):
        run_stage("01", root=toy_stage, track=False)


def test_a_stagebook_error_in_a_notebook_is_shown_as_its_own_message(project: Path):
    from conftest import write_notebook
    write_notebook(project / "nbs" / "00_page.ipynb", "page = 'project_page.md'",
                   "from stagebook.project_page import load_targets\nload_targets(page)")
    (project / "params" / "00_page.yaml").write_text("page: project_page.md\n")
    (project / "project_page.md").write_text("---\nproject: p\n---\n")
    with pytest.raises(StageFailed) as err:
        run_stage("00", root=project, track=False)
    assert str(err.value).startswith("stage 00_page failed in cell 2 of nbs/00_page.ipynb: ")
    assert "project_page.md: front matter lacks 'primary_metric'; add `primary_metric:`" in str(err.value)
    assert "StagebookError" not in str(err.value)


@pytest.mark.parametrize("params, message", [
    ("scale: 2\nfail: false\nscael: 3\n", r"unknown key\(s\) \['scael'\]: the notebook's parameters cell defines \['fail', 'scale'\]"),
    ("scale: 2\n", r"lacks \['fail'\], which the notebook's parameters cell defines"),
])
def test_params_file_and_parameters_cell_must_agree(toy_stage: Path, params: str, message: str):
    (toy_stage / "params" / "01_toy.yaml").write_text(params)
    with pytest.raises(StagebookError, match=message):
        run_stage("01", root=toy_stage, track=False)


def test_cli_audit_seal_and_ledger(project: Path):
    from stagebook.embedded import write_digits
    from stagebook.split import split_assignments
    from stagebook.audit import audit
    from stagebook.manifest import build_manifest

    stagebook = Path(sys.executable).parent / "stagebook"
    write_digits(project / "data" / "raw", per_class=4)
    (project / "data" / "raw" / "3" / "broken.png").write_bytes(b"")
    done = subprocess.run([str(stagebook), "audit", "data/raw", "--workers", "1"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "quarantined: 1" in done.stdout and "data/raw/3/broken.png: quarantined: zero-byte file" in done.stdout

    items = audit(build_manifest("data/raw", project), project, 0.01, workers=1, progress=False).items
    split_assignments(items, {"train": 0.5, "valid": 0.25, "test": 0.25}, 0).to_csv(project / "data" / "splits.csv", index=False)
    done = subprocess.run([str(stagebook), "seal", "--reason", "test"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("stagebook: sealed 10 test items as "), done.stdout + done.stderr
    done = subprocess.run([str(stagebook), "ledger"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0 and "seal" in done.stdout and "chain intact, 1 entries" in done.stdout
    ledger = project / "data" / "test_ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"test"', '"edited"'))
    done = subprocess.run([str(stagebook), "ledger"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 1 and "stagebook: error:" in done.stderr and "chain broken at line 1" in done.stderr
