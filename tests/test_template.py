"""`stagebook new` and `stagebook update` on the real template (a git clone of this repository), rendered by copier."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import REPO, git
from stagebook import StagebookError, __version__, colab
from stagebook.template import REVIEW_DIR, new, package_name, update

URL = "https://github.com/acme/leaf-disease.git"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    "A clone of this repository (its committed state, as a user's template source is), tagged v1.0.0."
    clone = tmp_path_factory.mktemp("template") / "stagebook"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    git(clone, "tag", "v1.0.0")
    return clone


@pytest.fixture(scope="module")
def digits_project(template: Path, tmp_path_factory) -> Path:
    "A project rendered with the digits example; tests only read it."
    return new(tmp_path_factory.mktemp("new") / "leaf", "Leaf disease (v2)", example="digits", repo_url=URL,
               source=str(template), ref="v1.0.0")


def _text_files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.suffix in {".py", ".ipynb", ".yaml", ".toml", ".md", ".texw"}:
            yield path


def _run_project_tests(root: Path) -> subprocess.CompletedProcess:
    "The project's own `make test` suite, with this venv (the project's package from its src/)."
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                          capture_output=True, text=True, env=env)


def test_new_leaves_the_toolkit_behind_and_names_the_package_after_the_project(digits_project: Path):
    root = digits_project
    assert not (root / "src" / "stagebook").exists() and not (root / "bench").exists()
    assert sorted(p.name for p in (root / "tests").iterdir()) == ["test_stages.py"]
    assert package_name("Leaf disease (v2)") == "leaf_disease_v2"
    assert (root / "src" / "leaf_disease_v2" / "features.py").is_file()
    assert not any("projectlib" in p.read_text(encoding="utf-8") for p in _text_files(root))
    assert "from leaf_disease_v2.features import" in (root / "nbs" / "04_tuning.ipynb").read_text()
    assert not (root / "dvc.lock").exists() and not (root / "metrics").exists()  # the example's runs stay behind


def test_new_pins_the_toolkit_wheel_and_records_the_template_version(digits_project: Path):
    root = digits_project
    assert f'dependencies = ["stagebook=={__version__}"]' in (root / "pyproject.toml").read_text()
    wheel = next((root / "wheels").glob("stagebook-*.whl"))
    assert wheel.name == f"stagebook-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "stagebook/template.py" in names and not any(n.startswith("projectlib") for n in names)
    answers = yaml.safe_load((root / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v1.0.0" and answers["package"] == "leaf_disease_v2"
    from stagebook.project import settings, template_version
    assert template_version(root) == "v1.0.0"
    assert settings(root)["experiment"] == "leaf-disease-v2"


def test_new_commits_once_with_notebook_aware_git_drivers(digits_project: Path):
    root = digits_project
    assert len(git(root, "log", "--oneline").splitlines()) == 1
    assert git(root, "status", "--porcelain") == ""
    assert "git-nbmergedriver" in git(root, "config", "--get", "merge.jupyternotebook.driver")
    assert "merge=jupyternotebook" in (root / ".gitattributes").read_text()


def test_new_fills_the_colab_cell_and_the_readme(digits_project: Path):
    first = nbformat.read(digits_project / "nbs" / "02_baseline.ipynb", as_version=4).cells[0]
    assert colab.repo_url_of(first.source) == URL
    readme = (digits_project / "README.md").read_text()
    assert "colab.research.google.com/github/acme/leaf-disease/blob/main/nbs/04_tuning.ipynb" in readme
    assert "make run" in readme and "Leaf disease (v2)" in readme


def test_the_new_project_passes_its_own_tests(digits_project: Path):
    done = _run_project_tests(digits_project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout) and "1 skipped" in done.stdout  # the seven-stage pin is the example's


def test_new_without_the_example_tells_the_user_where_the_data_goes(template: Path, tmp_path: Path):
    root = new(tmp_path / "empty", "Chest X-rays", example="none", source=str(template), ref="v1.0.0")
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    assert "vars" not in pipeline and "embed_digits" not in pipeline["stages"]
    assert "data/raw" in pipeline["stages"]["01_data_document"]["deps"]
    assert not (root / "params" / "embed_digits.yaml").exists()
    assert (root / "literature.csv").read_text().count("\n") == 1
    assert yaml.safe_load((root / "params" / "data.yaml").read_text())["source"] == "data/raw"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    done = subprocess.run(["stagebook", "run", "01_data_document", "--no-track"], cwd=root, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 1
    assert "data/raw: no images found; expected one sub-folder per class" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"package": "not-an-identifier"}, "not usable as the project's Python package"),
    ({"package": "stagebook"}, "not usable as the project's Python package"),
    ({"example": "cats"}, "expected one of digits, none"),
])
def test_new_refuses_bad_answers_in_one_line(template: Path, tmp_path: Path, kwargs, message):
    with pytest.raises(StagebookError, match=message):
        new(tmp_path / "p", "T", source=str(template), ref="v1.0.0", **kwargs)
    assert not (tmp_path / "p").exists()


def test_new_refuses_a_folder_that_holds_files(template: Path, tmp_path: Path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(StagebookError, match="exists and is not empty"):
        new(tmp_path / "p", "T", source=str(template))
    assert (tmp_path / "p" / "notes.txt").read_text() == "mine"


def _edit_cell(path: Path, cell_id: str, edit) -> None:
    book = json.loads(path.read_text())
    cell = next(c for c in book["cells"] if c["id"] == cell_id)
    edit(cell)
    path.write_text(json.dumps(book, indent=1, ensure_ascii=False) + "\n")


def test_update_merges_a_newer_template_into_a_diverged_project(template: Path, tmp_path: Path):
    root = new(tmp_path / "team", "Team project", source=str(template), ref="v1.0.0")
    # the team's work: a notebook title, a param, a target
    _edit_cell(root / "nbs" / "04_tuning.ipynb", "04-00", lambda c: c["source"].__setitem__(0, "# 04 · Tuning (ours)\n"))
    (root / "params" / "04_tuning.yaml").write_text((root / "params" / "04_tuning.yaml").read_text().replace("epochs: 20", "epochs: 30"))
    (root / "project_page.md").write_text((root / "project_page.md").read_text().replace("target: 0.95", "target: 0.97"))
    git(root, "commit", "-qam", "team edits")
    # a later template: the same title changed (a conflict), other cells, a params comment, the Makefile, a new file
    work = tmp_path / "template-work"
    subprocess.run(["git", "clone", "--quiet", str(template), str(work)], check=True)
    _edit_cell(work / "nbs" / "04_tuning.ipynb", "04-00", lambda c: c["source"].__setitem__(0, "# 04 · Tuning, new title\n"))
    _edit_cell(work / "nbs" / "04_tuning.ipynb", "04-05", lambda c: c["source"].append("\nTemplate v2 on the sanity phase."))
    _edit_cell(work / "nbs" / "02_baseline.ipynb", "02-00", lambda c: c["source"].append("\nTemplate v2 on baselines."))
    (work / "params" / "04_tuning.yaml").write_text("# template v2\n" + (work / "params" / "04_tuning.yaml").read_text())
    (work / "Makefile").write_text((work / "Makefile").read_text().replace("# stagebook:", "# stagebook (v2):", 1))
    (work / "reports" / "templates" / "07_extra.texw").write_text("% new in v2\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "template v2")
    git(work, "tag", "v2.0.0")

    report = update(root, ref="v2.0.0", source=str(work))

    assert report.old == "v1.0.0" and report.new == "v2.0.0"
    assert report.conflicts == ["nbs/04_tuning.ipynb"]
    assert {"Makefile", "nbs/02_baseline.ipynb"} <= set(report.updated)
    assert "params/04_tuning.yaml" in report.merged and "reports/templates/07_extra.texw" in report.added
    for path in (root / "nbs").glob("*.ipynb"):
        nbformat.validate(nbformat.read(path, as_version=4))  # every notebook is still a valid notebook
    assert not any(re.search(r"^(<<<<<<<|>>>>>>>)", p.read_text(encoding="utf-8"), re.M) for p in _text_files(root))
    tuning = nbformat.read(root / "nbs" / "04_tuning.ipynb", as_version=4)
    cells = {c.id: c.source for c in tuning.cells}
    assert cells["04-00"].startswith("# 04 · Tuning (ours)")  # the team's side of the conflict
    assert cells["04-05"].endswith("Template v2 on the sanity phase.")  # the template's other change, merged
    review = nbformat.read(root / REVIEW_DIR / "nbs" / "04_tuning.ipynb", as_version=4)
    assert next(c for c in review.cells if c.id == "04-00").source.startswith("# 04 · Tuning, new title")
    params = (root / "params" / "04_tuning.yaml").read_text()
    assert params.startswith("# template v2") and "epochs: 30" in params
    assert "target: 0.97" in (root / "project_page.md").read_text()
    assert "Template v2 on baselines." in (root / "nbs" / "02_baseline.ipynb").read_text()
    assert yaml.safe_load((root / ".copier-answers.yml").read_text())["_commit"] == "v2.0.0"
    done = _run_project_tests(root)  # notebooks, params, pipeline and the exported package still agree
    assert done.returncode == 0, done.stdout[-3000:]


def test_update_refuses_uncommitted_changes(digits_project: Path, tmp_path: Path):
    (digits_project / "project_page.md").write_text((digits_project / "project_page.md").read_text() + "\nedit\n")
    try:
        with pytest.raises(StagebookError, match="uncommitted changes"):
            update(digits_project)
    finally:
        git(digits_project, "checkout", "--", "project_page.md")


def test_update_needs_a_rendered_project(tmp_path: Path):
    with pytest.raises(StagebookError, match="works on projects made by `stagebook new`"):
        update(tmp_path)
