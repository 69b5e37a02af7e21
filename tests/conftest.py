"""Fixtures: a minimal stagebook project in a temp folder, with tiny real notebooks (no fake tools)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                   "GIT_COMMITTER_EMAIL": "t@t"}.items():
    os.environ.setdefault(key, value)
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    "A notebook with a `parameters` cell and code cells."
    first = new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    book = new_notebook(cells=[first, *(new_code_cell(c) for c in cells)],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    "An empty stagebook project (pyproject with [tool.stagebook], nbs/, params/) under git."
    root = tmp_path / "proj"
    (root / "nbs").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n\n[tool.stagebook]\nexperiment = "demo"\n')
    git(root, "init", "-q")
    return root


def add_stage(project: Path, name: str, params_yaml: str, params: str, *cells: str) -> Path:
    "Commit stage `name` to `project`: its notebook (parameters cell plus code cells) and its params file."
    write_notebook(project / "nbs" / f"{name}.ipynb", params, *cells)
    (project / "params" / f"{name}.yaml").write_text(params_yaml)
    git(project, "add", "-A")
    git(project, "commit", "-qm", name)
    return project


@pytest.fixture
def toy_stage(project: Path) -> Path:
    "Stage 01_toy: logs a metric from its params, a figure and a table."
    return add_stage(project, "01_toy", "scale: 2\nfail: false\n", "scale = 2\nfail = False",
                     "from stagebook import stage\nimport pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\n"
                     "import matplotlib.pyplot as plt\nctx = stage.init(0)",
                     "assert not fail, 'asked to fail'\nstage.log_metrics({'score': 0.5 * scale, 'count': 3})",
                     "fig, ax = plt.subplots(); ax.plot([1, 2]); stage.log_figure(fig, 'curve')\n"
                     "stage.log_table(pd.DataFrame({'a': [1]}), 'tiny')")
