from pathlib import Path

import pytest

from stagebook import StagebookError
from stagebook.project_page import load_targets

GOOD = "---\nproject: p\nprimary_metric: accuracy\ntarget: 0.9\nlatency_budget_ms: 4\n---\n# words\n"


def test_targets_are_read_from_front_matter(tmp_path: Path):
    page = tmp_path / "project_page.md"
    page.write_text(GOOD)
    targets = load_targets(page)
    assert (targets.primary_metric, targets.target, targets.latency_budget_ms) == ("accuracy", 0.9, 4.0)
    assert targets.met(0.95) and not targets.met(0.85)


def test_the_template_page_is_valid():
    repo = Path(__file__).resolve().parents[1]
    assert load_targets(repo / "project_page.md").primary_metric == "accuracy"


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("target: 0.9\n", ""), "lacks 'target'; add `target:`"),
    (GOOD.replace("latency_budget_ms: 4\n", ""), "lacks 'latency_budget_ms'"),
    (GOOD.replace("0.9", "high"), "'target' must be a number"),
    ("# no front matter\n", "no YAML front matter"),
    (GOOD.replace("project: p", "project: [p"), "front matter is not valid YAML"),
    (GOOD.replace("---\n# words", "direction: up\n---\n# words"), "'direction' must be maximize or minimize"),
])
def test_a_bad_page_names_the_file_and_the_fix(tmp_path: Path, text: str, message: str):
    page = tmp_path / "project_page.md"
    page.write_text(text)
    with pytest.raises(StagebookError, match=message) as err:
        load_targets(page)
    assert str(page) in str(err.value)


@pytest.mark.parametrize("front, line", [
    ("project: x\nprimary_metric: accuracy\ntarget: [0.9\ndirection: maximize\n", "at line 4 (while parsing a flow sequence"),
    ("project: x\nprimary_metric: accuracy\ntarget: 0.9\n  bad: indent: x\n", "at line 5 (mapping values are not allowed"),
])
def test_a_yaml_error_names_the_line_of_the_file(tmp_path, front, line):
    page = tmp_path / "project_page.md"
    page.write_text(f"---\n{front}---\n\n# Project page\n")
    with pytest.raises(StagebookError) as refused:
        load_targets(page)
    assert line in str(refused.value)
