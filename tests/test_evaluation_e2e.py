"""The sealed test read only on purpose, end to end: a model submitted after `dvc repro` is evaluated once and its
identity chains back to stage 04; a changed param spends no read; new test items need an explicit seal
(`e2e.built_evaluated`)."""
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from e2e import built_evaluated, copy_for_test, ledger_entries, module_copy, pdf_text, set_params, stage_runs, stagebook

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("warm_kernels")]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    "This module's copy of the project after a submitted model was evaluated (`e2e.built_evaluated`); read only."
    yield from module_copy(built_evaluated(tmp_path_factory), tmp_path_factory.mktemp("evaluated") / "project")


@pytest.fixture
def evaluated_copy(evaluated: Path, tmp_path: Path, monkeypatch) -> Path:
    return copy_for_test(evaluated, tmp_path / "project", monkeypatch)


def test_a_submitted_model_is_evaluated_once_and_its_identity_chains_back_to_stage_04(evaluated: Path):
    events = [e["event"] for e in ledger_entries(evaluated)]  # the first submit: refused below the bar, or accepted
    assert events[0] == "seal" and events[-3:] == ["submit", "read", "result"]  # one read, for the model submitted
    assert events[1:-3] in ([], ["refused"], ["submit"])  # (the same bytes submitted twice are one submission)
    metrics = json.loads((evaluated / "metrics/06_sealed_test.json").read_text())
    assert metrics["evaluated"] == 1 and metrics["model_rank"] == 1 and metrics["read_budget"] == 5
    lineage = {p.stem: json.loads(p.read_text()) for p in (evaluated / "lineage").glob("*.json")}
    checkpoints = pd.read_csv(evaluated / "reports/04_tuning/tables/checkpoints.csv", keep_default_na=False)
    model = lineage["06_sealed_test"]["model_sha256"]
    assert model in set(checkpoints.sha256) and checkpoints.set_index("sha256").loc[model, "model"] == "yes"
    assert model == lineage["04_tuning"]["model_sha256"] == lineage["05_error_analysis"]["model_sha256"]
    assert ledger_entries(evaluated)[-1]["model_sha256"] == model
    for stage, record in lineage.items():  # every PDF's lineage: the data and model the stage made or used
        text = pdf_text(evaluated / f"reports/{stage}.pdf") if (evaluated / f"reports/{stage}.pdf").is_file() else ""
        if stage >= "01":
            assert record["data_version"] != "none" and (not text or record["data_version"] in text), stage
        if stage >= "04":
            assert record["model_sha256"] != "none" and (not text or record["model_sha256"][:16] in text), stage
    report = pdf_text(evaluated / "reports/06_sealed_test.pdf")
    assert "Model 1 of 5 evaluated on this seal" in report and "Validation accuracy" in report
    assert "test CI" in report


def test_rerunning_the_sealed_stage_reuses_the_result_and_dvc_exp_run_never_reads(evaluated_copy: Path):
    root = evaluated_copy
    ledger = (root / "data/test_ledger.jsonl").read_bytes()
    done = subprocess.run(["dvc", "exp", "run", "-S", "params/04_tuning.yaml:epochs=3"], cwd=root,  # a new model
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "06_sealed_test" not in done.stdout.replace("'06_sealed_test' didn't change", "")
    assert (root / "data/test_ledger.jsonl").read_bytes() == ledger  # a changed param spends no test read
    again = stagebook(root, "run", "06")
    assert again.returncode == 0, again.stderr
    assert [e["event"] for e in ledger_entries(root)][-1] == "reuse"
    assert json.loads((root / "metrics/06_sealed_test.json").read_text())["reused_result"] == 1


def test_the_model_report_shows_the_evaluation(evaluated: Path):
    text = pdf_text(evaluated / "reports/06_sealed_test.pdf")
    for words in ("Lineage", "Code commit", "Data version", "Params hash", "Model sha256", "Test accuracy",
                  "Latency per item", "Confusion matrix", "Per-class results", "precision"):
        assert words in text, words
    assert (evaluated / "reports/06_sealed_test/figures/confusion_matrix.png").is_file()


def test_dvc_metrics_show_and_stagebook_exps_fit_a_120_column_terminal(evaluated: Path):
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=evaluated, capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "120"})
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and len(lines) == 8, shown.stdout + shown.stderr  # a header and one row per stage
    assert max(map(len, lines)) <= 120 and "…" not in shown.stdout, shown.stdout
    assert {"items", "leakage", "valid_acc", "test_acc", "ci_low", "ci_high"} <= set(lines[0].split())
    exps = stagebook(evaluated, "exps", "--width", "120")
    assert exps.returncode == 0 and "04:valid_acc" in exps.stdout and "06:test_acc" in exps.stdout, exps.stderr
    assert max(map(len, exps.stdout.splitlines())) <= 120


def test_new_data_moves_no_item_and_new_test_items_need_an_explicit_seal(evaluated_copy: Path):
    before = pd.read_csv(evaluated_copy / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path").split
    set_params(evaluated_copy, "embed_digits", per_class=20)  # 50 more images arrive
    done = subprocess.run(["dvc", "repro", "01_data_document"], cwd=evaluated_copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    refused = stagebook(evaluated_copy, "run", "06")  # the sealed stage checks the seal before anything else
    assert refused.returncode == 1
    out = refused.stderr
    after = pd.read_csv(evaluated_copy / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path").split
    assert len(after) == 200 and (after.reindex(before.index) == before).all(), "no placed item may move"
    added_to_test = sorted(set(after[after == "test"].index) - set(before.index))
    assert added_to_test, "the class-balanced placement should put some of 50 new items into test"
    assert f"no longer matches its seal (added {len(added_to_test)}: {added_to_test[0]}" in out, out[-2000:]
    doc = (evaluated_copy / "data_doc.md").read_text()  # the data document says so, and how to accept them
    assert f"**Not sealed yet:** the test split differs from the seal ({len(added_to_test)} added test items)" in doc
    assert "`stagebook seal --reason TEXT`" in doc
    sealed = stagebook(evaluated_copy, "seal", "--reason", "50 new images")
    assert sealed.returncode == 0, sealed.stderr
    accepted = stagebook(evaluated_copy, "run", "06")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert stage_runs(evaluated_copy)[-1].data.tags["stagebook.stage"] == "06_sealed_test"
    metrics = json.loads((evaluated_copy / "metrics/06_sealed_test.json").read_text())
    assert metrics["test_items"] == len(after[after == "test"]) and metrics["model_rank"] == 1  # a new seal, a new count
