"""The stages agree with each other: notebooks, params, pipeline and the nbdev-exported package.

This module travels into every project `stagebook new` renders (copier.yml keeps it), so it reads the project it
sits in and assumes nothing about the worked example but where it says so.
"""
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import nbformat
import papermill
import pytest
import yaml

from stagebook import colab
from stagebook.params import load_params
from stagebook.project import stages

REPO = Path(__file__).resolve().parents[1]
STAGES = stages(REPO)
PACKAGE = Path(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["nbdev"]["lib_path"]).name


@pytest.mark.skipif(not (REPO / "src" / "stagebook").is_dir(), reason="the worked example's own check: a project adds stages")
def test_the_worked_example_has_seven_numbered_stages():
    assert [s.name[:2] for s in STAGES] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_notebook_opens_with_the_colab_setup_cell(stage):
    first = nbformat.read(stage.notebook, as_version=4).cells[0]
    assert first.cell_type == "code" and colab.is_setup_cell(first.source)
    assert first.source == colab.setup_cell(colab.repo_url_of(first.source)), "run `stagebook update` or copy the cell"


def test_notebooks_are_stored_in_nbdev_clean_form(tmp_path: Path):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copytree(REPO / "nbs", tmp_path / "nbs", ignore=shutil.ignore_patterns(".*"))
    done = subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    changed = [p.name for p in (REPO / "nbs").glob("*.ipynb") if p.read_bytes() != (tmp_path / "nbs" / p.name).read_bytes()]
    assert not changed, f"nbdev-clean would change {changed}: run `nbdev-clean` and commit"
    for path in (tmp_path / "nbs").glob("*.ipynb"):  # and it kept the tag papermill needs
        assert any("parameters" in c.metadata.get("tags", []) for c in nbformat.read(path, as_version=4).cells), path.name


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_parameters_cell_names_the_params_file_keys(stage):
    "Same names; the values may differ: the params file is the one source of truth, papermill injects it."
    book = nbformat.read(stage.notebook, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{stage.notebook} needs exactly one cell tagged 'parameters'"
    assert set(papermill.inspect_notebook(str(stage.notebook))) == set(load_params(stage.params_file))


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_params_pass_their_schema_and_every_key_has_rules(stage):
    from stagebook.schema import load_schema, validate
    schema = load_schema(stage.params_file)
    assert schema is not None, f"add {stage.params_file.stem}.schema.yaml next to {stage.params_file.name}"
    validate(load_params(stage.params_file), schema, stage.params_file)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebooks_are_committed_without_outputs(stage):
    book = nbformat.read(stage.notebook, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in book.cells if c.cell_type == "code")


def test_dvc_pipeline_runs_every_stage_with_its_notebook_and_params():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        spec = pipeline[stage.name]
        assert spec["cmd"] == f"stagebook run {stage.name}"
        assert f"nbs/{stage.name}.ipynb" in spec["deps"]
        assert {f"params/{stage.name}.yaml": None} in spec["params"]
        assert any(f"metrics/{stage.name}.json" in o for o in spec["outs"])  # every number, read by later stages
        assert any(f"metrics/headline/{stage.name}.json" in m for m in spec["metrics"])  # what `dvc metrics show` lists
    # each stage reads its predecessor's metrics, so a change re-runs what follows and nothing before; except the
    # sealed stage, which runs only for a submitted model: no retraining or new data re-runs it by itself
    from stagebook.project import settings
    sealed = settings(REPO)["sealed_test_stage"]
    for before, after in zip(STAGES, STAGES[1:]):
        if after.name != sealed:
            assert f"metrics/{before.name}.json" in pipeline[after.name]["deps"]
    if sealed in pipeline:
        assert "data/submission.json" in pipeline[sealed]["deps"]
        assert not {"models/model.pth", "data/splits.csv"} & set(pipeline[sealed]["deps"])


def test_nbdev_export_would_not_change_src(tmp_path: Path):
    for part in ("pyproject.toml", "nbs"):  # src/ is written from scratch, so an export that writes nothing fails
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    done = subprocess.run([str(Path(sys.executable).parent / "nbdev-export")], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    compare = filecmp.dircmp(REPO / "src" / PACKAGE, tmp_path / "src" / PACKAGE, ignore=["__pycache__"])
    changed = compare.diff_files + compare.left_only + compare.right_only
    assert not changed, f"nbdev-export changes {changed}: run `make export` and commit src/{PACKAGE}"
