"""The model card: Mitchell et al.'s eight sections filled from the project's own records, a PDF stored with the
registered version."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO
from stagebook import registry
from stagebook.modelcard import card_context, markdown_sections, write_card
from stagebook.zoo import build

SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Ethical considerations", "Caveats and recommendations"]


@pytest.fixture
def carded(project: Path) -> Path:
    for name in ("project_page.md", "data_doc.md", "reports/templates/model_card.texw"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, project / name)
    (project / "data").mkdir(exist_ok=True)
    pd.DataFrame({"path": [f"{c}/{i}.png" for c in "abc" for i in range(10)], "label": [c for c in "abc" for _ in range(10)],
                  "status": "ok", "split": ["train"] * 6 + ["valid"] * 2 + ["test"] * 2 + ["train"] * 20}
                 ).to_csv(project / "data/splits.csv", index=False)
    errors = project / "reports/05_error_analysis/tables"
    errors.mkdir(parents=True)
    pd.DataFrame({"slice": ["source", "source"], "value": ["scanner_a", "phone_b"], "items": [40, 12], "errors": [1, 5],
                  "accuracy": [0.975, 0.583], "vs_overall": [0.07, -0.32]}).to_csv(errors / "slices.csv", index=False)
    model = build("small_cnn", 3, 1, 4)
    meta = {"arch": "small_cnn", "classes": ["a", "b", "c"], "image_size": 12, "width": 4, "channels": 1}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, project / "m.pth")
    registry.register(project, project / "m.pth", {"code_commit": "c0ffee" * 6, "data_version": "d" * 64,
                                                    "test_accuracy": "0.91", "test_ci_low": "0.88",
                                                    "test_ci_high": "0.94", "seal_hash": "5" * 64})
    return project


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_the_card_has_the_eight_sections_from_the_records_and_is_stored_with_the_version(carded: Path):
    version = registry.versions(carded)[0]
    pdf = write_card(carded, version)
    text = _text(pdf)
    positions = [text.find(f"{i}. {s}") for i, s in enumerate(SECTIONS, 1)]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "sorting step" in text and "Optical Recognition" in text  # the project page and the data document
    assert "phone_b" in text and "0.583" in text  # stage 05's slices
    assert "0.91" in text and "0.88 to 0.94" in text and "c0ffeec0ffee" in text  # metrics with CI, lineage
    tagged = registry.versions(carded)[0].tags["model_card_sha256"]
    assert tagged == hashlib.sha256(pdf.read_bytes()).hexdigest()
    fetched = registry.fetch(carded, version, f"model_card/{pdf.name}", carded / "copy.pdf", tagged)
    assert fetched.read_bytes() == pdf.read_bytes()


def test_a_section_the_team_has_not_written_says_so(carded: Path):
    page = carded / "project_page.md"
    text = page.read_text()
    start = text.index("## Ethical considerations")
    page.write_text(text[:start] + text[text.index("## Caveats", start):])
    sections = {s["title"]: s["text"] for s in card_context(carded, registry.versions(carded)[0])["sections"]}
    assert sections["Ethical considerations"].startswith("*To be written by the team: add a `## Ethical considerations`")
    assert "43 writers" in sections["Caveats and recommendations"]


def test_markdown_sections_skip_front_matter_and_the_generated_block(tmp_path: Path):
    doc = tmp_path / "d.md"
    doc.write_text("---\nx: 1\n---\n# T\n## A\none\n## B\ntwo\n<!-- stagebook:generated -->\n## C\nthree\n")
    assert markdown_sections(doc) == {"A": "one", "B": "two"}
