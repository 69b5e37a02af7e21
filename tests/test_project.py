from pathlib import Path

import pytest

from stagebook import StagebookError
from stagebook.project import find_root, resolve_stage, settings, stages


def test_root_is_found_from_a_subfolder(project: Path):
    assert find_root(project / "nbs") == project


def test_outside_a_project_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("STAGEBOOK_ROOT", raising=False)
    with pytest.raises(StagebookError, match="not inside a stagebook project"):
        find_root(tmp_path)


def test_stages_are_ordered_and_resolved_by_number_or_name(toy_stage: Path):
    (toy_stage / "nbs" / "00_first.ipynb").write_text("{}")
    (toy_stage / "nbs" / "scratch.ipynb").write_text("{}")
    assert [s.name for s in stages(toy_stage)] == ["00_first", "01_toy"]
    assert resolve_stage(toy_stage, "01").name == "01_toy"
    assert resolve_stage(toy_stage, "nbs/01_toy.ipynb").name == "01_toy"
    with pytest.raises(StagebookError, match="no stage notebook matches '07'; stages are: 00_first, 01_toy"):
        resolve_stage(toy_stage, "07")


def test_unknown_setting_is_refused(project: Path):
    (project / "pyproject.toml").write_text("[tool.stagebook]\nexperimant = 'x'\n")
    with pytest.raises(StagebookError, match=r"unknown key\(s\) \['experimant'\]"):
        settings(project)


def test_an_environment_override_takes_effect_in_a_running_process(project: Path, monkeypatch):
    assert settings(project)["tracking_uri"] == "sqlite:///mlflow.db"
    monkeypatch.setenv("STAGEBOOK_TRACKING_URI", "http://head:5000")  # e.g. set after the first read, in a kernel
    assert settings(project)["tracking_uri"] == "http://head:5000"
    monkeypatch.delenv("STAGEBOOK_TRACKING_URI")
    assert settings(project)["tracking_uri"] == "sqlite:///mlflow.db"


def test_the_stages_before_the_sealed_test_are_what_make_run_reproduces_first(project: Path, monkeypatch, capsys):
    import shutil

    from conftest import REPO
    from stagebook.cli import main
    from stagebook.project import stages_before_test

    for name in ("00_page", "05_check", "06_sealed_test", "07_after"):
        (project / "nbs" / f"{name}.ipynb").write_text("{}")
    assert stages_before_test(project) == ["00_page", "05_check"]
    monkeypatch.chdir(project)
    assert main(["stages", "--before-test"]) == 0
    assert capsys.readouterr().out.split() == ["00_page", "05_check"]
    other = shutil.copytree(project, project.parent / "other")  # a project whose test stage has another name
    with (other / "pyproject.toml").open("a") as f:
        f.write('sealed_test_stage = "05_check"\n')
    assert stages_before_test(other) == ["00_page"]
    # `make run`: those stages first, so the sealed test runs once, after the submission (not first with nothing)
    recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in recipe.replace("\\\n", " ").splitlines()[1:] if not line.strip().startswith("@#")]
    assert commands[0] == "stages=$$(stagebook stages --before-test) && dvc repro $$stages"  # none run if it fails
    assert commands[1].count("dvc repro") == 2  # after a submission, and after a refused one (06 says why)
