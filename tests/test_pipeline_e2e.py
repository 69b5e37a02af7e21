"""The whole pipeline of a project rendered by `stagebook new`, through `dvc repro`, on a small subset of the embedded
digits (about 2-3 minutes)."""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, git

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("warm_kernels")]
SMALL = {"embed_digits": {"per_class": 15},
         "02_baseline": {"forest_trees": 50},
         "04_tuning": {"epochs": 10, "overfit_epochs": 10, "train_accuracy_target": 0.8, "early_stopping_patience": 3,
                       "search_grid": {"dropout": [0.1, 0.3]}},
         "06_sealed_test": {"latency_repeats": 20}}


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


def _all_runs(root: Path) -> list:
    from stagebook.project import settings
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(settings(root)["experiment"])
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)


def _runs(root: Path) -> list:
    "Top-level runs: one per stage execution (nested phase, baseline and sweep runs left out)."
    return [r for r in _all_runs(root) if "mlflow.parentRunId" not in r.data.tags]


def _children(root: Path, run) -> list:
    return [r for r in _all_runs(root) if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    "A project rendered from this template by `stagebook new`, run once end to end on the subset."
    from stagebook.template import new
    root = new(tmp_path_factory.mktemp("e2e") / "project", "Digits e2e", source=str(REPO))
    for stage, values in SMALL.items():
        _set_params(root, stage, **values)
    git(root, "commit", "-qam", "a small subset for the test")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(root / "src")  # the project's package, as its `make setup` installs it
    try:
        _dvc_repro(root)
        yield root
    finally:
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


def _copy(src: Path, dest: Path) -> Path:
    "An independent copy of a run project: its own git, DVC cache, MLflow store and artifact folder."
    import sqlite3
    shutil.copytree(src, dest, symlinks=True)
    old, new = (src / "mlartifacts").resolve().as_uri(), (dest / "mlartifacts").resolve().as_uri()
    with sqlite3.connect(dest / "mlflow.db") as db:  # MLflow stores the artifact root as an absolute URI
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    return dest


@pytest.fixture
def project(pipeline: Path, tmp_path: Path, monkeypatch) -> Path:
    "A fresh copy of the run pipeline for a test that changes things, so no test depends on another's leftovers."
    root = _copy(pipeline, tmp_path / "project")
    monkeypatch.setenv("PYTHONPATH", str(root / "src"))
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
    assert len({v for k, v in data_versions.items() if k >= "01"}) == 1  # 01's own lineage names the data it wrote
    tags = {r.data.tags["stagebook.stage"]: r.data.tags for r in runs}
    assert tags["04_tuning"]["stagebook.model_role"] == "produced" and tags["04_tuning"]["stagebook.model_sha256"] != "none"
    assert tags["05_error_analysis"]["stagebook.model_sha256"] == tags["04_tuning"]["stagebook.model_sha256"]
    # nothing was submitted: the sealed stage ran (its outputs exist) but read nothing
    assert "no model has been submitted" in tags["06_sealed_test"]["stagebook.ended"]
    assert [e["event"] for e in _ledger(pipeline)] == ["seal"]
    assert (pipeline / "dvc.lock").is_file()


def _ledger(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "data/test_ledger.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(pipeline: Path, tmp_path_factory) -> Path:
    """The run pipeline after a submission: a first `stagebook submit` is refused when the CNN does not beat the bar
    (on 30 validation items a classical baseline usually scores 1.0); with input-independent baselines only, stage 04's model
    beats the bar, is submitted, and `dvc repro` evaluates it on the sealed test."""
    root = _copy(pipeline, tmp_path_factory.mktemp("evaluated") / "project")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(root / "src")
    try:
        tuned = json.loads((root / "metrics/04_tuning.json").read_text())
        first = _stagebook(root, "submit", "--by", "e2e", "--reason", "too early")
        bar = tuned["best_baseline_valid_accuracy"]
        if tuned["valid_accuracy"] <= bar:  # the usual case on 30 validation items: a classical baseline scores 1.0
            assert first.returncode == 1 and f"does not beat the stage-02 bar {bar:.4f}" in first.stderr, first.stderr
        else:
            assert first.returncode == 0, first.stderr
        _set_params(root, "02_baseline", models=["majority_class", "class_prior"])
        _set_params(root, "04_tuning", phases=["sanity", "one_batch", "regularise"])  # quicker: no finder, no search
        git(root, "commit", "-qam", "input-independent baselines only")
        _dvc_repro(root)
        submitted = _stagebook(root, "submit", "--by", "e2e", "--reason", "beats the bar")
        assert submitted.returncode == 0, submitted.stderr
        git(root, "add", "-A", "data/submission.json", "models/submitted")
        git(root, "commit", "-qm", "submit the model")
        _dvc_repro(root)
        yield root
    finally:
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


@pytest.fixture
def evaluated_copy(evaluated: Path, tmp_path: Path, monkeypatch) -> Path:
    root = _copy(evaluated, tmp_path / "project")
    monkeypatch.setenv("PYTHONPATH", str(root / "src"))
    return root


def test_a_submitted_model_is_evaluated_once_and_its_identity_chains_back_to_stage_04(evaluated: Path):
    events = [e["event"] for e in _ledger(evaluated)]  # the first submit: refused below the bar, or accepted
    assert events[0] == "seal" and events[-3:] == ["submit", "read", "result"]  # one read, for the model submitted
    assert events[1:-3] in ([], ["refused"], ["submit"])  # (the same bytes submitted twice are one submission)
    metrics = json.loads((evaluated / "metrics/06_sealed_test.json").read_text())
    assert metrics["evaluated"] == 1 and metrics["model_rank"] == 1 and metrics["read_budget"] == 5
    lineage = {p.stem: json.loads(p.read_text()) for p in (evaluated / "lineage").glob("*.json")}
    checkpoints = pd.read_csv(evaluated / "reports/04_tuning/tables/checkpoints.csv", keep_default_na=False)
    model = lineage["06_sealed_test"]["model_sha256"]
    assert model in set(checkpoints.sha256) and checkpoints.set_index("sha256").loc[model, "model"] == "yes"
    assert model == lineage["04_tuning"]["model_sha256"] == lineage["05_error_analysis"]["model_sha256"]
    assert _ledger(evaluated)[-1]["model_sha256"] == model
    for stage, record in lineage.items():  # every PDF's lineage: the data and model the stage made or used
        text = _pdf_text(evaluated / f"reports/{stage}.pdf") if (evaluated / f"reports/{stage}.pdf").is_file() else ""
        if stage >= "01":
            assert record["data_version"] != "none" and (not text or record["data_version"] in text), stage
        if stage >= "04":
            assert record["model_sha256"] != "none" and (not text or record["model_sha256"][:16] in text), stage
    report = _pdf_text(evaluated / "reports/06_sealed_test.pdf")
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
    again = _stagebook(root, "run", "06")
    assert again.returncode == 0, again.stderr
    assert [e["event"] for e in _ledger(root)][-1] == "reuse"
    assert json.loads((root / "metrics/06_sealed_test.json").read_text())["reused_result"] == 1


def test_promote_gate_predict_and_serve_follow_the_champion(evaluated_copy: Path):
    """First champion by the targets; a worse challenger refused as not better, a wider one as slower, each with its
    numbers; an override recorded; each version's model card stored with it in the registry."""
    root = evaluated_copy
    page = root / "project_page.md"
    text = re.sub(r"(?m)^target: .*$", "target: 0.5", page.read_text())  # a small test set, a modest bar
    # stage 06's latency was measured beside another test's training (pytest -n 2): 92 ms once against the 5 ms
    # budget. The first champion's test here is the gate's logic, so the budget is out of the way; "no slower" below
    # compares paired timings of champion and challenger taken side by side, which load skews far less.
    page.write_text(re.sub(r"(?m)^latency_budget_ms: .*$", "latency_budget_ms: 1000", text))
    first = _stagebook(root, "promote")
    assert first.returncode == 0 and "first champion: test accuracy" in first.stdout and "version 1 is the champion" in first.stdout, first.stdout + first.stderr
    card = _pdf_text(root / "reports/model_card/v1.pdf")
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
                    "Ethical considerations", "Caveats and recommendations", "Lineage"):
        assert section in card, section
    assert "first champion" in card and "Accuracy by slice" in card and "sorting step" in card  # ledger, 05, page
    tags = _version_tags(root, 1)
    assert len(tags["model_card_sha256"]) == 64 and tags["model_card_sha256"] == _sha(root / "reports/model_card/v1.pdf")
    images = sorted((root / "data/raw/digits/3").glob("*.png"))[:3]
    answered = _stagebook(root, "predict", *map(str, images), "--out", "p.json")
    assert answered.returncode == 0, answered.stderr
    answers = json.loads((root / "p.json").read_text())
    commit = json.loads((root / "lineage/04_tuning.json").read_text())["code_commit"]
    assert [a["model_version"] for a in answers] == [1, 1, 1] and answers[0]["code_commit"] == commit
    # a worse challenger: three epochs (enough to beat the input-independent bar, short of the champion's ten),
    # submitted, evaluated (a second test read), then judged; "ci_low > 0" refuses an equal one too
    _challenger(root, "three epochs", epochs=3)
    judged = _stagebook(root, "promote")
    assert judged.returncode == 1 and "better: no (ci_low > 0" in judged.stdout, judged.stdout + judged.stderr
    assert "no slower at batch 1:" in judged.stdout and (root / "reports/gate/v2_refused.pdf").is_file()
    assert "refused by the gate" in judged.stderr and _ledger(root)[-1]["event"] == "gate_refused"
    # a slower challenger: the same recipe, eight times wider (about as accurate on 8-px digits, many times the work)
    _challenger(root, "eight times wider", epochs=10, width=128)
    wide = _stagebook(root, "promote")
    assert wide.returncode == 1 and "no slower at batch 64: no" in wide.stdout, wide.stdout + wide.stderr
    ratio = float(re.search(r"no slower at batch 64: no \(.*?ratio ([0-9.]+)", wide.stdout).group(1))
    assert ratio > 1.10 and "refused by the gate" in _pdf_text(root / "reports/model_card/v3.pdf")
    forced = _stagebook(root, "promote", "--override", "--by", "Ada", "--reason", "worth its latency on the server")
    assert forced.returncode == 0 and "promoted by override: Ada: worth its latency on the server" in forced.stdout
    assert _ledger(root)[-1]["detail"]["override_reason"] == "worth its latency on the server"
    assert "worth its latency on the server" in _pdf_text(root / "reports/model_card/v3.pdf")  # the card says so
    again = _stagebook(root, "predict", str(images[0]), "--out", "p.json")  # the same command, the new champion
    assert again.returncode == 0 and json.loads((root / "p.json").read_text())[0]["model_version"] == 3


def _challenger(root: Path, message: str, **params) -> None:
    "Train with `params`, submit the model and evaluate it on the sealed test (one more read)."
    _set_params(root, "04_tuning", **params)
    git(root, "commit", "-qam", message)
    _dvc_repro(root)
    assert _stagebook(root, "submit", "--by", "e2e", "--reason", message).returncode == 0
    _dvc_repro(root)


def _version_tags(root: Path, version: int) -> dict:
    from stagebook import registry
    return dict(next(v for v in registry.versions(root) if int(v.version) == version).tags)


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_lineage_names_the_toolkit_and_template_versions(pipeline: Path):
    from stagebook import __version__
    from stagebook.project import template_version
    version = template_version(pipeline)
    assert version and version != "unknown"
    for metrics in (pipeline / "metrics").glob("*.json"):  # numbers only: `dvc metrics show` tabulates them
        assert all(isinstance(v, (int, float)) for v in json.loads(metrics.read_text()).values()), metrics.name
        lineage = json.loads((pipeline / "lineage" / metrics.name).read_text())
        assert (lineage["stagebook_version"], lineage["template_version"]) == (__version__, version), metrics.name
        assert lineage["device"] == "cpu" and lineage["torch_version"] and lineage["stage"] == metrics.stem
    text = subprocess.run(["pdftotext", "-layout", str(pipeline / "reports/06_sealed_test.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert re.search(rf"stagebook\s+{re.escape(__version__)}", text) and re.search(rf"Template\s+{re.escape(version)}", text)


def test_saving_notebooks_in_jupyterlab_leaves_git_and_dvc_still(pipeline: Path):
    from conftest import jupyter_lab, save_as_a_browser_would
    status = subprocess.run(["dvc", "status"], cwd=pipeline, capture_output=True, text=True).stdout
    assert "up to date" in status
    tracked = git(pipeline, "status", "--porcelain", "--untracked-files=no")
    with jupyter_lab(pipeline) as call:
        for path in sorted((pipeline / "nbs").glob("*.ipynb")):
            save_as_a_browser_would(call, path.name)
    assert subprocess.run(["dvc", "status"], cwd=pipeline, capture_output=True, text=True).stdout == status
    assert git(pipeline, "status", "--porcelain", "--untracked-files=no") == tracked


def test_nbdev_test_runs_the_notebooks_and_skips_the_sealed_read(pipeline: Path):
    ledger = (pipeline / "data/test_ledger.jsonl").read_bytes()
    for name in ("00_problem_page", "03_literature_notes", "06_sealed_test"):
        done = subprocess.run(["nbdev-test", f"nbs/{name}.ipynb", "--n-workers", "0"], cwd=pipeline,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (pipeline / "data/test_ledger.jsonl").read_bytes() == ledger  # no test read, no ledger line


def test_every_pdf_builds_without_overfull_boxes(pipeline: Path):
    logs = sorted((pipeline / "reports").glob("0*/report.log"))
    assert [p.parent.name for p in logs] == ["01_data_document", "02_baseline", "03_literature_notes", "04_tuning",
                                             "05_error_analysis", "06_sealed_test"]
    for log in logs:  # LaTeX's own word: nothing sticks out into the margin
        assert "Overfull \\hbox" not in log.read_text(errors="replace"), log


def test_every_figure_prints_its_text_at_7_pt_or_more(pipeline: Path):
    from stagebook.report import MIN_PRINT_PT, TEXTWIDTH_IN
    records = sorted((pipeline / "reports").glob("0*/figures/*.json"))
    assert len(records) >= 10
    for record in records:  # at full text width at most; the report widens a figure until its text reaches 7 pt
        meta = json.loads(record.read_text())
        assert meta["min_font_pt"] * TEXTWIDTH_IN / meta["width_in"] >= MIN_PRINT_PT, record


def test_outputs_and_deliverables(pipeline: Path):
    assert len(list((pipeline / "data/raw/digits").glob("*/*.png"))) == 150
    doc = (pipeline / "data_doc.md").read_text()
    assert "150 items, 150 usable, 0 quarantined" in doc and "0 duplicate clusters or groups straddle" in doc
    assert (pipeline / "models/model.pth").is_file()
    text = _pdf_text(pipeline / "reports/06_sealed_test.pdf")
    assert "No model evaluated" in text and "stagebook submit" in text
    data_doc = _pdf_text(pipeline / "reports/01_data_document.pdf")
    for words in ("Data document", "Motivation", "Labelling process", "Generated statistics", "test set sealed as",
                  "Cross-split leakage", "Quarantined (0)"):
        assert words in data_doc, words
    ok = _stagebook(pipeline, "ledger")
    assert ok.returncode == 0 and "chain intact, 1 entries" in ok.stdout  # the seal; nothing submitted, nothing read


def test_the_model_report_shows_the_evaluation(evaluated: Path):
    text = _pdf_text(evaluated / "reports/06_sealed_test.pdf")
    for words in ("Lineage", "Code commit", "Data version", "Params hash", "Model sha256", "Test accuracy",
                  "Latency per item", "Confusion matrix", "Per-class results", "precision"):
        assert words in text, words
    assert (evaluated / "reports/06_sealed_test/figures/confusion_matrix.png").is_file()


def test_modelling_deliverables_show_what_each_stage_did(pipeline: Path):
    expected = {"02_baseline": ("Lineage", "Model sha256", "The bar for the deep model", "majority_class", "knn",
                                "random_forest", "linear_svm", "logistic_regression", "class_prior"),
                "03_literature_notes": ("Lineage", "Reported results beside our baselines", "Alpaydin", "Feasibility",
                                        "Comments", "unchecked"),
                "04_tuning": ("Lineage", "Sanity", "Overfit one batch", "Learning-rate finder", "Overfit all training data",
                              "Regularise", "Augmentation preview", "Search", "Checkpoints", "search_best"),
                "05_error_analysis": ("Lineage", "Most-confused pairs", "precision", "recall", "Grad-CAM",
                                      "Metrics by slice", "group_size", "image_size", "Relabel queue")}
    for stage, words in expected.items():
        text = _pdf_text(pipeline / f"reports/{stage}.pdf")
        for word in words:
            assert word in text, f"{stage}: {word}"
    for figure in ("lr_finder", "onebatch_loss", "overfit_curves", "regularised_curves", "augmentation_preview", "search"):
        assert (pipeline / f"reports/04_tuning/figures/{figure}.png").is_file(), figure
    for figure in ("confusion_matrix", "per_class", "top_losses", "gradcam_top_losses", "slices"):
        assert (pipeline / f"reports/05_error_analysis/figures/{figure}.png").is_file(), figure
    queue = pd.read_csv(pipeline / "reports/05_error_analysis/tables/relabel_queue.csv")
    assert "reviewed_label" in queue.columns


def test_baselines_phases_and_sweep_variants_are_nested_mlflow_runs(pipeline: Path):
    top = {r.data.tags["stagebook.stage"]: r for r in _runs(pipeline)}
    baselines = {r.info.run_name for r in _children(pipeline, top["02_baseline"])}
    assert baselines == {f"baseline {m}" for m in ("majority_class", "class_prior", "logistic_regression", "knn",
                                                   "linear_svm", "random_forest")}
    tuning = {r.info.run_name: r for r in _children(pipeline, top["04_tuning"])}
    phases = sorted(n for n in tuning if n.startswith("phase"))
    assert phases == ["phase 0 sanity", "phase 1 overfit one batch", "phase 2 lr finder", "phase 3 overfit all data",
                      "phase 4 regularise", "phase 5 best of search"]
    assert sorted(n for n in tuning if not n.startswith("phase")) == ["04_tuning v00", "04_tuning v01"]
    assert all(r.info.status == "FINISHED" for r in tuning.values())
    assert {tuning["04_tuning v00"].data.params["dropout"], tuning["04_tuning v01"].data.params["dropout"]} == {"0.1", "0.3"}
    client = MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    curve = client.get_metric_history(tuning["phase 4 regularise"].info.run_id, "train_loss")
    assert len(curve) == top["04_tuning"].data.metrics["epochs_run"] >= 2, "one loss value per epoch"


def test_each_phase_leaves_a_dvc_tracked_checkpoint_with_its_sha256(pipeline: Path):
    from stagebook.lineage import file_sha256
    table = pd.read_csv(pipeline / "reports/04_tuning/tables/checkpoints.csv")
    assert table.phase.tolist() == ["one_batch", "overfit", "regularised", "search_best"]
    for row in table.itertuples():
        assert file_sha256(pipeline / row.file) == row.sha256
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())
    assert "models/checkpoints" in {out["path"] for out in lock["stages"]["04_tuning"]["outs"]}
    metrics = json.loads((pipeline / "metrics/04_tuning.json").read_text())
    assert metrics["search_variants"] == 2 and metrics["onebatch_final_loss"] < 0.05


def test_second_repro_runs_nothing(pipeline: Path):
    before = len(_runs(pipeline))
    out = _dvc_repro(pipeline)
    assert "Data and pipelines are up to date." in out
    assert len(_runs(pipeline)) == before


def test_dvc_metrics_show_and_stagebook_exps_fit_a_120_column_terminal(evaluated: Path):
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=evaluated, capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "120"})
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and len(lines) == 8, shown.stdout + shown.stderr  # a header and one row per stage
    assert max(map(len, lines)) <= 120 and "…" not in shown.stdout, shown.stdout
    assert {"items", "leakage", "valid_acc", "test_acc", "ci_low", "ci_high"} <= set(lines[0].split())
    exps = _stagebook(evaluated, "exps", "--width", "120")
    assert exps.returncode == 0 and "04:valid_acc" in exps.stdout and "06:test_acc" in exps.stdout, exps.stderr
    assert max(map(len, exps.stdout.splitlines())) <= 120


def _wait_for(predicate, seconds: float = 120.0) -> None:
    import time
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_kill_9_under_dvc_repro_loses_nothing_and_the_next_command_clears_the_ghost(project: Path):
    import signal
    outputs = ("metrics/04_tuning.json", "metrics/headline/04_tuning.json", "lineage/04_tuning.json", "models",
               "reports/04_tuning.pdf", "reports/04_tuning", "reports/executed/04_tuning.ipynb")
    before = _digests(project, *outputs)
    runs_before = len(_all_runs(project))
    repro = subprocess.Popen(["dvc", "repro", "-f", "-s", "04_tuning"], cwd=project, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = project / "reports/.staging/04_tuning/children"
    try:  # mid-stage: a phase has finished, checkpoints are being written, MLflow runs are open (the run opens
        # beside the kernel, so on a quick machine the phases can be ahead of it: wait for both)
        _wait_for(lambda: children.is_dir() and len(list(children.iterdir())) >= 3 and _open_runs(project) > 0)
    finally:
        os.killpg(repro.pid, signal.SIGKILL)  # dvc, the runner, its MLflow helper: the whole job at once
        repro.wait()
    assert _digests(project, *outputs) == before, "a kill must not cost the last good outputs"
    assert any(r.info.status == "RUNNING" for r in _all_runs(project)[runs_before:])  # a ghost, until ...
    listed = _stagebook(project, "runs")  # ... the next stagebook command
    assert listed.returncode == 0 and "had died; marked" in listed.stderr, listed.stderr
    assert not [r.info.run_name for r in _all_runs(project) if r.info.status == "RUNNING"]
    assert not (project / "reports/.staging/04_tuning").exists() and not list((project / "reports/.locks").glob("*"))
    _wait_for(lambda: not any(p.name.startswith("stagebook-kernel-") and not _alive_owner(p)
                              for p in Path(tempfile.gettempdir()).iterdir()), 10)
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr  # DVC recovers


def _open_runs(root: Path) -> int:
    "How many runs the MLflow store has open (read without MLflow: the wait polls it)."
    import sqlite3
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]


def _alive_owner(folder: Path) -> bool:
    from stagebook.runlock import alive
    pid = folder.name[len("stagebook-kernel-"):].split("-", 1)[0]
    return not pid.isdigit() or alive(int(pid))


def _digests(root: Path, *paths: str) -> dict:
    "sha256 of every file under the given paths (files or folders)."
    from stagebook.lineage import file_sha256
    files = [p for rel in paths for p in ([root / rel] if (root / rel).is_file() else sorted((root / rel).rglob("*")))]
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in files if p.is_file()}


def test_a_stage_failing_under_dvc_repro_keeps_its_last_good_outputs(project: Path):
    outputs = ("metrics/03_literature_notes.json", "reports/03_literature_notes.pdf",
               "reports/executed/03_literature_notes.ipynb", "reports/03_literature_notes")
    before = _digests(project, *outputs)
    assert len(before) > 4
    literature = project / "literature.csv"
    kept = literature.read_text()
    literature.write_text(kept.replace(",accuracy,0.97,", ",accuracy,97%,", 1))  # a cell of stage 03 raises
    try:
        out = _dvc_repro(project, ok=False)
        assert "97%" in out and "03_literature_notes" in out
        assert _digests(project, *outputs) == before  # DVC did not delete them (persist), the runner kept them
    finally:
        literature.write_text(kept)
    assert "Data and pipelines are up to date." in _dvc_repro(project)  # back in step, nothing to re-run


def test_same_params_and_seed_give_identical_metrics_and_model(project: Path):
    first = json.loads((project / "metrics/04_tuning.json").read_text())
    model = (project / "models/model.pth").read_bytes()
    done = subprocess.run(["dvc", "repro", "-f", "-s", "04_tuning"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    second = json.loads((project / "metrics/04_tuning.json").read_text())
    timing = {k for k in first if "seconds" in k} | {"lineage"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert (project / "models/model.pth").read_bytes() == model


def test_a_model_that_cannot_learn_fails_the_overfit_one_batch_phase_and_keeps_the_old_model(project: Path):
    model = (project / "models/model.pth").read_bytes()
    before = len(_runs(project))
    done = _stagebook(project, "run", "04", "--set", "onebatch_lr=1e-9")  # weights that barely move cannot learn
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "overfit-one-batch failed: the loss on one batch of 64 is still" in done.stderr
    cells = json.loads((project / "nbs/04_tuning.ipynb").read_text())["cells"]
    failing = next(i for i, c in enumerate(cells, 1) if "training.overfit_one_batch(" in "".join(c["source"]))
    assert f"cell {failing} of nbs/04_tuning.ipynb" in done.stderr  # counted as a person sees the notebook
    assert (project / "models/model.pth").read_bytes() == model, "a failed stage must not replace the model"
    failed = _runs(project)[before:]
    assert [r.info.status for r in failed] == ["FAILED"]
    phases = {r.info.run_name: r.info.status for r in _children(project, failed[0])}
    assert phases == {"phase 0 sanity": "FINISHED", "phase 1 overfit one batch": "FAILED"}


def test_stagebook_sweep_runs_variants_in_parallel_nested_under_one_parent(project: Path):
    model = (project / "models/model.pth").read_bytes()
    out = project / "reports/sweeps/cli"
    done = _stagebook(project, "sweep", "04", "weight_decay=0.001,0.1", "--set", "phases=[regularise]",
                      "--set", "epochs=2", "--jobs", "2", "--metric", "valid_accuracy", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary.weight_decay) == [0.001, 0.1] and (summary.status == "ok").all()
    assert summary.valid_accuracy.is_monotonic_decreasing and (summary.epochs_run <= 2).all()
    assert "2 variants in" in done.stdout and "on Ray on this machine" in done.stdout and "2 at a time; 0 failed" in done.stdout
    parent = [r for r in _runs(project) if r.info.run_name == "04_tuning sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in _children(project, parent[0])) == ["04_tuning v00", "04_tuning v01"]
    assert (project / "models/model.pth").read_bytes() == model, "variants never touch the stage's outputs"


def test_a_stage_05_param_reruns_05_only_when_its_numbers_do_not_change(project: Path):
    before = len(_runs(project))
    ledger = (project / "data/test_ledger.jsonl").read_bytes()
    metrics = (project / "metrics/05_error_analysis.json").read_bytes()
    _set_params(project, "05_error_analysis", top_losses=5)  # a gallery size: no number of 05's changes
    _dvc_repro(project)
    new = _runs(project)[before:]
    assert [r.data.tags["stagebook.stage"] for r in new] == ["05_error_analysis"]
    # 06 reads 05's metrics, which hold numbers only (lineage is in lineage/): unchanged, so no sealed-test stage
    assert (project / "metrics/05_error_analysis.json").read_bytes() == metrics
    assert (project / "data/test_ledger.jsonl").read_bytes() == ledger


def test_new_data_moves_no_item_and_new_test_items_need_an_explicit_seal(evaluated_copy: Path):
    before = pd.read_csv(evaluated_copy / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path").split
    _set_params(evaluated_copy, "embed_digits", per_class=20)  # 50 more images arrive
    done = subprocess.run(["dvc", "repro", "01_data_document"], cwd=evaluated_copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    refused = _stagebook(evaluated_copy, "run", "06")  # the sealed stage checks the seal before anything else
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
    sealed = _stagebook(evaluated_copy, "seal", "--reason", "50 new images")
    assert sealed.returncode == 0, sealed.stderr
    accepted = _stagebook(evaluated_copy, "run", "06")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert _runs(evaluated_copy)[-1].data.tags["stagebook.stage"] == "06_sealed_test"
    metrics = json.loads((evaluated_copy / "metrics/06_sealed_test.json").read_text())
    assert metrics["test_items"] == len(after[after == "test"]) and metrics["model_rank"] == 1  # a new seal, a new count


def test_a_changed_byte_in_a_sealed_image_stops_stage_06_with_its_name(project: Path):
    victim = sorted(json.loads((project / "data/test.seal.json").read_text())["items"])[0]
    file = project / "data/raw/digits" / victim  # sealed paths are relative to the data root
    data = bytearray(file.read_bytes())
    data[-6] ^= 0x01
    file.write_bytes(bytes(data))
    done = _stagebook(project, "run", "06", "--no-track")
    assert done.returncode == 1 and f"changed 1: {victim}" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_manifest_stops_stage_01_in_one_line_and_loses_nothing(project: Path):
    splits, doc = (project / "data/splits.csv").read_bytes(), (project / "data_doc.md").read_bytes()
    (project / "data/list.csv").write_text("path,label\nraw/digits/0/digit_0000.png,0\nraw/digits/0/nope.png,0\n")
    config = project / "params/data.yaml"
    config.write_text(config.read_text().replace("source: data/raw/digits", "source: data/list.csv"))
    done = _stagebook(project, "run", "01")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "list.csv: row 3 names 'raw/digits/0/nope.png', which does not exist" in done.stderr
    assert (project / "data/splits.csv").read_bytes() == splits and (project / "data_doc.md").read_bytes() == doc


def test_reviewed_relabels_are_applied_by_stage_01_and_test_items_are_refused(project: Path):
    splits = pd.read_csv(project / "data/splits.csv", dtype=str, keep_default_na=False)
    item = splits[(splits.split == "valid") & (splits.status == "ok")].iloc[0]
    new_label = "1" if item.label != "1" else "2"
    relabels = project / "data/relabels.csv"
    relabels.write_text(f"path,label,predicted,reviewed_label,reviewer\n{item.path},{item.label},{new_label},{new_label},t\n")
    done = _stagebook(project, "run", "01", "--no-track")
    assert done.returncode == 0, done.stderr[-2000:]
    after = pd.read_csv(project / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path")
    assert after.loc[item.path, "label"] == new_label and after.loc[item.path, "relabeled_from"] == item.label
    assert after.loc[item.path, "split"] == "valid"
    assert json.loads((project / "metrics/01_data_document.json").read_text())["relabeled"] == 1
    test_item = splits[splits.split == "test"].iloc[0]
    relabels.write_text(f"path,reviewed_label\n{test_item.path},{new_label}\n")
    done = _stagebook(project, "run", "01", "--no-track")
    assert done.returncode == 1 and f"{test_item.path} is a sealed test item" in done.stderr
