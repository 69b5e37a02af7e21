"""The whole pipeline of a project rendered by `stagebook new`, through `dvc repro`, on a small subset of the embedded
digits (`e2e.built_pipeline`): what one run leaves behind, and what changing, failing or killing a stage does to it.
The evaluation of a submitted model is in `test_evaluation_e2e`, the champion gate in `test_champion_e2e`."""
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import git

from e2e import (all_runs, built_pipeline, children, copy_for_test, dvc_repro, ledger_entries, module_copy, pdf_text,
                 set_params, stage_runs, stagebook)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("warm_kernels")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    "This module's copy of the project run once end to end (`e2e.built_pipeline`); its tests only read it."
    yield from module_copy(built_pipeline(tmp_path_factory), tmp_path_factory.mktemp("e2e") / "project")


@pytest.fixture
def project(pipeline: Path, tmp_path: Path, monkeypatch) -> Path:
    "A fresh copy of the run pipeline for a test that changes things, so no test depends on another's leftovers."
    return copy_for_test(pipeline, tmp_path / "project", monkeypatch)


def test_first_repro_runs_every_stage_once_with_lineage(pipeline: Path):
    runs = stage_runs(pipeline)
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
    assert [e["event"] for e in ledger_entries(pipeline)] == ["seal"]
    assert (pipeline / "dvc.lock").is_file()


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
    text = pdf_text(pipeline / "reports/06_sealed_test.pdf")
    assert "No model evaluated" in text and "stagebook submit" in text
    data_doc = pdf_text(pipeline / "reports/01_data_document.pdf")
    for words in ("Data document", "Motivation", "Labelling process", "Generated statistics", "test set sealed as",
                  "Cross-split leakage", "Quarantined (0)"):
        assert words in data_doc, words
    ok = stagebook(pipeline, "ledger")
    assert ok.returncode == 0 and "chain intact, 1 entries" in ok.stdout  # the seal; nothing submitted, nothing read


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
        text = pdf_text(pipeline / f"reports/{stage}.pdf")
        for word in words:
            assert word in text, f"{stage}: {word}"
    for figure in ("lr_finder", "onebatch_loss", "overfit_curves", "regularised_curves", "augmentation_preview", "search"):
        assert (pipeline / f"reports/04_tuning/figures/{figure}.png").is_file(), figure
    for figure in ("confusion_matrix", "per_class", "top_losses", "gradcam_top_losses", "slices"):
        assert (pipeline / f"reports/05_error_analysis/figures/{figure}.png").is_file(), figure
    queue = pd.read_csv(pipeline / "reports/05_error_analysis/tables/relabel_queue.csv")
    assert "reviewed_label" in queue.columns


def test_baselines_phases_and_sweep_variants_are_nested_mlflow_runs(pipeline: Path):
    top = {r.data.tags["stagebook.stage"]: r for r in stage_runs(pipeline)}
    baselines = {r.info.run_name for r in children(pipeline, top["02_baseline"])}
    assert baselines == {f"baseline {m}" for m in ("majority_class", "class_prior", "logistic_regression", "knn",
                                                   "linear_svm", "random_forest")}
    tuning = {r.info.run_name: r for r in children(pipeline, top["04_tuning"])}
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
    before = len(stage_runs(pipeline))
    out = dvc_repro(pipeline)
    assert "Data and pipelines are up to date." in out
    assert len(stage_runs(pipeline)) == before


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
    runs_before = len(all_runs(project))
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
    assert any(r.info.status == "RUNNING" for r in all_runs(project)[runs_before:])  # a ghost, until ...
    listed = stagebook(project, "runs")  # ... the next stagebook command
    assert listed.returncode == 0 and "had died; marked" in listed.stderr, listed.stderr
    assert not [r.info.run_name for r in all_runs(project) if r.info.status == "RUNNING"]
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
        out = dvc_repro(project, ok=False)
        assert "97%" in out and "03_literature_notes" in out
        assert _digests(project, *outputs) == before  # DVC did not delete them (persist), the runner kept them
    finally:
        literature.write_text(kept)
    assert "Data and pipelines are up to date." in dvc_repro(project)  # back in step, nothing to re-run


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
    before = len(stage_runs(project))
    done = stagebook(project, "run", "04", "--set", "onebatch_lr=1e-9")  # weights that barely move cannot learn
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "overfit-one-batch failed: the loss on one batch of 64 is still" in done.stderr
    cells = json.loads((project / "nbs/04_tuning.ipynb").read_text())["cells"]
    failing = next(i for i, c in enumerate(cells, 1) if "training.overfit_one_batch(" in "".join(c["source"]))
    assert f"cell {failing} of nbs/04_tuning.ipynb" in done.stderr  # counted as a person sees the notebook
    assert (project / "models/model.pth").read_bytes() == model, "a failed stage must not replace the model"
    failed = stage_runs(project)[before:]
    assert [r.info.status for r in failed] == ["FAILED"]
    phases = {r.info.run_name: r.info.status for r in children(project, failed[0])}
    assert phases == {"phase 0 sanity": "FINISHED", "phase 1 overfit one batch": "FAILED"}


def test_stagebook_sweep_runs_variants_in_parallel_nested_under_one_parent(project: Path):
    model = (project / "models/model.pth").read_bytes()
    out = project / "reports/sweeps/cli"
    done = stagebook(project, "sweep", "04", "weight_decay=0.001,0.1", "--set", "phases=[regularise]",
                      "--set", "epochs=2", "--jobs", "2", "--metric", "valid_accuracy", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary.weight_decay) == [0.001, 0.1] and (summary.status == "ok").all()
    assert summary.valid_accuracy.is_monotonic_decreasing and (summary.epochs_run <= 2).all()
    assert "2 variants in" in done.stdout and "on Ray on this machine" in done.stdout and "2 at a time; 0 failed" in done.stdout
    parent = [r for r in stage_runs(project) if r.info.run_name == "04_tuning sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children(project, parent[0])) == ["04_tuning v00", "04_tuning v01"]
    assert (project / "models/model.pth").read_bytes() == model, "variants never touch the stage's outputs"


def test_a_stage_05_param_reruns_05_only_when_its_numbers_do_not_change(project: Path):
    before = len(stage_runs(project))
    ledger = (project / "data/test_ledger.jsonl").read_bytes()
    metrics = (project / "metrics/05_error_analysis.json").read_bytes()
    set_params(project, "05_error_analysis", top_losses=5)  # a gallery size: no number of 05's changes
    dvc_repro(project)
    new = stage_runs(project)[before:]
    assert [r.data.tags["stagebook.stage"] for r in new] == ["05_error_analysis"]
    # 06 reads 05's metrics, which hold numbers only (lineage is in lineage/): unchanged, so no sealed-test stage
    assert (project / "metrics/05_error_analysis.json").read_bytes() == metrics
    assert (project / "data/test_ledger.jsonl").read_bytes() == ledger


def test_a_changed_byte_in_a_sealed_image_stops_stage_06_with_its_name(project: Path):
    victim = sorted(json.loads((project / "data/test.seal.json").read_text())["items"])[0]
    file = project / "data/raw/digits" / victim  # sealed paths are relative to the data root
    data = bytearray(file.read_bytes())
    data[-6] ^= 0x01
    file.write_bytes(bytes(data))
    done = stagebook(project, "run", "06", "--no-track")
    assert done.returncode == 1 and f"changed 1: {victim}" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_manifest_stops_stage_01_in_one_line_and_loses_nothing(project: Path):
    splits, doc = (project / "data/splits.csv").read_bytes(), (project / "data_doc.md").read_bytes()
    (project / "data/list.csv").write_text("path,label\nraw/digits/0/digit_0000.png,0\nraw/digits/0/nope.png,0\n")
    config = project / "params/data.yaml"
    config.write_text(config.read_text().replace("source: data/raw/digits", "source: data/list.csv"))
    done = stagebook(project, "run", "01")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "list.csv: row 3 names 'raw/digits/0/nope.png', which does not exist" in done.stderr
    assert (project / "data/splits.csv").read_bytes() == splits and (project / "data_doc.md").read_bytes() == doc


def test_reviewed_relabels_are_applied_by_stage_01_and_test_items_are_refused(project: Path):
    splits = pd.read_csv(project / "data/splits.csv", dtype=str, keep_default_na=False)
    item = splits[(splits.split == "valid") & (splits.status == "ok")].iloc[0]
    new_label = "1" if item.label != "1" else "2"
    relabels = project / "data/relabels.csv"
    relabels.write_text(f"path,label,predicted,reviewed_label,reviewer\n{item.path},{item.label},{new_label},{new_label},t\n")
    done = stagebook(project, "run", "01", "--no-track")
    assert done.returncode == 0, done.stderr[-2000:]
    after = pd.read_csv(project / "data/splits.csv", dtype=str, keep_default_na=False).set_index("path")
    assert after.loc[item.path, "label"] == new_label and after.loc[item.path, "relabeled_from"] == item.label
    assert after.loc[item.path, "split"] == "valid"
    assert json.loads((project / "metrics/01_data_document.json").read_text())["relabeled"] == 1
    test_item = splits[splits.split == "test"].iloc[0]
    relabels.write_text(f"path,reviewed_label\n{test_item.path},{new_label}\n")
    done = stagebook(project, "run", "01", "--no-track")
    assert done.returncode == 1 and f"{test_item.path} is a sealed test item" in done.stderr

