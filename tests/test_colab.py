"""The notebooks' Colab set-up cell, run in a fresh kernel: a no-op outside Colab; under a stub `google.colab` it
clones the project from a local git URL, installs the pinned toolkit without touching torch, and moves the runs to
Drive. pip runs for real with PIP_DRY_RUN, so the test installs nothing into this environment."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from conftest import REPO
from stagebook import colab

STUB = {"google/__init__.py": "", "google/colab/__init__.py": "",
        "google/colab/drive.py": "from pathlib import Path\n\ndef mount(path):\n    (Path(path) / 'MyDrive').mkdir(parents=True, exist_ok=True)\n"}


def _stub(tmp_path: Path) -> Path:
    "A stand-in `google.colab` package (drive.mount makes MyDrive), to put on the kernel's PYTHONPATH."
    stub = tmp_path / "stub"
    for rel, text in STUB.items():
        (stub / rel).parent.mkdir(parents=True, exist_ok=True)
        (stub / rel).write_text(text)
    return stub


def _run_cells(folder: Path, *sources: str, env: dict | None = None) -> list[str]:
    "Execute the cells in a fresh python3 kernel started in `folder`; returns each cell's stdout."
    book = new_notebook(cells=[new_code_cell(s) for s in sources])
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in book.cells]


def test_every_stage_notebook_starts_with_the_same_setup_cell():
    for path in sorted((REPO / "nbs").glob("*.ipynb")):
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.source == colab.setup_cell(""), path.name


def test_setup_url_is_filled_in_and_read_back():
    cell = colab.setup_cell("https://example.org/a/b.git")
    assert colab.repo_url_of(cell) == "https://example.org/a/b.git"
    assert cell.count("REPO_URL = ") == 1 and colab.is_setup_cell(cell)


def test_outside_colab_the_cell_does_nothing(tmp_path: Path):
    out = _run_cells(tmp_path, colab.setup_cell("file:///nowhere.git"),
                     "import os, sys; print(os.getcwd()); print('google.colab' in sys.modules)")
    assert out[0] == "" and out[1].split() == [str(tmp_path), "False"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def pushed_project(tmp_path: Path) -> str:
    "A rendered project pushed to a bare repository: the URL a Colab user would paste."
    from stagebook.template import new
    project = new(tmp_path / "src-project", "Colab demo", source=str(REPO), repo_url="")
    bare = tmp_path / "colab-demo.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(project), str(bare)], check=True)
    return bare.as_uri()


def test_under_colab_it_clones_installs_pinned_and_moves_runs_to_drive(tmp_path: Path, pushed_project: str):
    stub = _stub(tmp_path)
    empty, content, drive = tmp_path / "empty", tmp_path / "content", tmp_path / "drive"
    empty.mkdir()
    cell = colab.setup_cell(pushed_project).replace("USE_DRIVE = False", "USE_DRIVE = True")
    env = {"PYTHONPATH": str(stub), "STAGEBOOK_COLAB_DIR": str(content), "STAGEBOOK_DRIVE": str(drive),
           "PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1"}
    out = _run_cells(empty, cell, "import os; print(os.getcwd()); print(os.environ['STAGEBOOK_TRACKING_URI'])",
                     env=env)
    project = content / "colab-demo"
    assert (project / "nbs" / "00_problem_page.ipynb").is_file()  # cloned from the URL
    pins = (project / ".colab-constraints.txt").read_text().split()
    assert any(p.startswith("torch==") for p in pins) and any(p.startswith("torchvision==") for p in pins)
    store = drive / "MyDrive" / "stagebook" / "colab-demo"
    cwd, uri = out[1].split()
    assert cwd == str(project) and uri == f"sqlite:///{store / 'mlflow.db'}"
    assert str(store / "dvc-cache") in (project / ".dvc" / "config.local").read_text()
    assert f"project at {project}" in out[0]


def test_under_colab_without_a_url_it_says_what_to_set(tmp_path: Path):
    stub = _stub(tmp_path)
    book = new_notebook(cells=[new_code_cell(colab.setup_cell(""))])
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = str(stub)
    try:
        client = NotebookClient(book, timeout=120, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    error = next(o for o in book.cells[0].outputs if o.output_type == "error")
    assert error.ename == "SystemExit" and "set REPO_URL in this cell" in error.evalue
