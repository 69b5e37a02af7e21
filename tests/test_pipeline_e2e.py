"""The whole template pipeline, through `dvc repro`, on a small subset of the embedded digits (about 2-3 minutes)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
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


def _dvc_repro(root: Path, ok: bool = True) -> str:
    done = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _stagebook(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["stagebook", *args], cwd=root, capture_output=True, text=True)


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


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_outputs_and_deliverables(pipeline: Path):
    assert len(list((pipeline / "data/raw/digits").glob("*/*.png"))) == 150
    doc = (pipeline / "data_doc.md").read_text()
    assert "150 items, 150 usable, 0 quarantined" in doc and "0 duplicate clusters or groups straddle" in doc
    assert (pipeline / "models/model.pth").is_file()
    text = _pdf_text(pipeline / "reports/06_sealed_test.pdf")
    for words in ("Lineage", "Code commit", "Data version", "Params hash", "Model sha256", "Test accuracy",
                  "Latency per item", "Confusion matrix", "Per-class results", "precision"):
        assert words in text, words
    assert (pipeline / "reports/06_sealed_test/figures/confusion_matrix.png").is_file()
    data_doc = _pdf_text(pipeline / "reports/01_data_document.pdf")
    for words in ("Data document", "Motivation", "Labelling process", "Generated statistics", "test set sealed as",
                  "Cross-split leakage", "Quarantined (0)"):
        assert words in data_doc, words
    ok = _stagebook(pipeline, "ledger")
    assert ok.returncode == 0 and "chain intact, 3 entries" in ok.stdout  # seal, read, result


def test_second_repro_runs_nothing(pipeline: Path):
    before = len(_runs(pipeline))
    out = _dvc_repro(pipeline)
    assert "Data and pipelines are up to date." in out
    assert len(_runs(pipeline)) == before


def test_a_stage_05_param_reruns_05_and_06_only(pipeline: Path):
    before = len(_runs(pipeline))
    _set_params(pipeline, "05_error_analysis", top_losses=5)
    _dvc_repro(pipeline)
    new = _runs(pipeline)[before:]
    assert [r.data.tags["stagebook.stage"] for r in new] == ["05_error_analysis", "06_sealed_test"]
    assert new[-1].data.metrics["reused_result"] == 1, "the same model must not read the test set twice"


def test_new_data_moves_no_item_and_new_test_items_need_an_explicit_seal(pipeline: Path):
    before = pd.read_csv(pipeline / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path").split
    _set_params(pipeline, "embed_digits", per_class=20)  # 50 more images arrive
    out = _dvc_repro(pipeline, ok=False)
    after = pd.read_csv(pipeline / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path").split
    assert len(after) == 200 and (after.reindex(before.index) == before).all(), "no placed item may move"
    added_to_test = sorted(set(after[after == "test"].index) - set(before.index))
    assert added_to_test, "the class-balanced placement should put some of 50 new items into test"
    assert f"no longer matches its seal (added {len(added_to_test)}: {added_to_test[0]}" in out, out[-2000:]
    sealed = _stagebook(pipeline, "seal", "--reason", "50 new images")
    assert sealed.returncode == 0, sealed.stderr
    _dvc_repro(pipeline)
    assert _runs(pipeline)[-1].data.tags["stagebook.stage"] == "06_sealed_test"


def test_a_changed_byte_in_a_sealed_image_stops_stage_06_with_its_name(pipeline: Path):
    victim = sorted(json.loads((pipeline / "data/test.seal.json").read_text())["items"])[0]
    data = bytearray((pipeline / victim).read_bytes())
    data[-6] ^= 0x01
    (pipeline / victim).write_bytes(bytes(data))
    done = _stagebook(pipeline, "run", "06", "--no-track")
    assert done.returncode == 1 and f"changed 1: {victim}" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_manifest_stops_stage_01_in_one_line_and_loses_nothing(pipeline: Path):
    splits, doc = (pipeline / "data/splits.csv").read_bytes(), (pipeline / "data_doc.md").read_bytes()
    (pipeline / "data/list.csv").write_text("path,label\nraw/digits/0/digit_0000.png,0\nraw/digits/0/nope.png,0\n")
    done = _stagebook(pipeline, "run", "01", "--set", "source=data/list.csv")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "list.csv: row 3 names 'raw/digits/0/nope.png', which does not exist" in done.stderr
    assert (pipeline / "data/splits.csv").read_bytes() == splits and (pipeline / "data_doc.md").read_bytes() == doc
