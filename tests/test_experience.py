"""The experience report: the team's text, then the facts the project recorded, as a PDF."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, git
from stagebook import StagebookError
from stagebook.experience import write_report
from stagebook.seal import Ledger


@pytest.fixture
def recorded(project: Path) -> Path:
    for name in ("project_page.md", "reports/experience.md", "reports/templates/experience_report.texw"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, project / name)
    (project / "reports/experience.md").write_text("# Experience report\n\n## What worked\nThe overfit-first recipe.\n")
    (project / "metrics").mkdir()
    (project / "metrics/04_tuning.json").write_text(json.dumps(
        {"init_loss": 2.31, "init_loss_expected": 2.3026, "onebatch_final_loss": 0.012, "valid_accuracy": 0.871,
         "best_baseline_valid_accuracy": 0.802, "search_variants": 2}))
    tuning, errors = project / "reports/04_tuning/tables", project / "reports/05_error_analysis/tables"
    tuning.mkdir(parents=True)
    errors.mkdir(parents=True)
    pd.DataFrame({"variant": ["v00", "v01"], "dropout": [0.1, 0.4], "valid_accuracy": [0.84, 0.871]}).to_csv(tuning / "search.csv", index=False)
    pd.DataFrame({"class": ["cat", "dog", "owl"], "precision": [0.9, 0.5, 0.8], "recall": [0.9, 0.4, 0.8],
                  "f1": [0.9, 0.444, 0.8], "support": [10, 10, 10]}).to_csv(errors / "per_class.csv", index=False)
    ledger = Ledger(project, "stagebook promote", "")
    ledger.append("promote", {"version": 1, "champion_before": None, "why": ["first champion: met"]}, "a" * 64)
    ledger.append("gate_refused", {"version": 2, "champion_before": 1, "why": ["no slower at batch 64: no"]}, "b" * 64)
    ledger.append("promote", {"version": 2, "champion_before": 1, "why": [], "override_by": "Ada",
                              "override_reason": "worth it on the server"}, "b" * 64)
    git(project, "add", "-A")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return project


def test_the_report_prints_the_team_text_then_the_recorded_facts(recorded: Path):
    pdf = write_report(recorded)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.split())  # phrases may wrap
    assert "The overfit-first recipe." in flat
    assert "1 commit from" in flat
    assert "one batch overfit to loss 0.0120" in flat and "valid accuracy 0.8710 against the best baseline" in flat
    assert text.index("v01") < text.index("v00")  # the search, best first
    weakest = [line for line in text.splitlines() if line.strip().startswith(("dog", "owl", "cat"))]
    assert [w.split()[0] for w in weakest] == ["dog", "owl", "cat"]
    assert "version 2 refused" in flat and "override by Ada: worth it on the server" in flat


def test_without_the_team_text_it_says_what_to_write(recorded: Path):
    (recorded / "reports/experience.md").unlink()
    with pytest.raises(StagebookError, match="reports/experience.md: the team's part of the experience report is missing"):
        write_report(recorded)
