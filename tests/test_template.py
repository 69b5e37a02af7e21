"""The template itself: notebooks, params, pipeline and the nbdev-exported package agree with each other."""
import ast
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from stagebook.params import load_params
from stagebook.project import stages

REPO = Path(__file__).resolve().parents[1]
STAGES = stages(REPO)


def test_seven_numbered_stages():
    assert [s.name[:2] for s in STAGES] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_parameters_cell_defaults_equal_the_params_file(stage):
    book = nbformat.read(stage.notebook, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{stage.notebook} needs exactly one cell tagged 'parameters'"
    defaults = {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(stage.notebook)).items()}
    assert defaults == load_params(stage.params_file)


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
        assert any(f"metrics/{stage.name}.json" in m for m in spec["metrics"])
    # each stage reads its predecessor's metrics, so a change re-runs what follows and nothing before
    for before, after in zip(STAGES, STAGES[1:]):
        assert f"metrics/{before.name}.json" in pipeline[after.name]["deps"]


def test_nbdev_export_would_not_change_src(tmp_path: Path):
    for part in ("pyproject.toml", "nbs", "src/projectlib"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    done = subprocess.run([str(Path(sys.executable).parent / "nbdev-export")], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    compare = filecmp.dircmp(REPO / "src/projectlib", tmp_path / "src/projectlib", ignore=["__pycache__"])
    changed = compare.diff_files + compare.left_only + compare.right_only
    assert not changed, f"nbdev-export changes {changed}: run `make export` and commit src/projectlib"
    assert "def load_pixels" in (REPO / "src/projectlib/features.py").read_text()
    assert "def load_model" in (REPO / "src/projectlib/models.py").read_text()
