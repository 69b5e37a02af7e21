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
