"""The report layer: Pweave weaves a template with a run's context, latexmk builds the PDF."""
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from stagebook import StagebookError
from stagebook.report import render_pdf, table, tex

CTX = {"stage": "06_x", "created": "2026-01-01 00:00 UTC", "metrics": {"acc": 0.875}, "params": {},
       "lineage": {"code_commit": "0123456789abcdef" * 2 + "01234567", "code_dirty": True, "data_version": "d1a2t3a4",
                   "params_hash": "p1a2r3", "model_sha256": "f" * 64, "stagebook_version": "0.1.0"}}
TEMPLATE = r"""\documentclass{article}
\usepackage{booktabs}
\begin{document}
<<echo=False, results='tex'>>=
from stagebook.report import lineage_block, report_context
ctx = report_context()
print(lineage_block(ctx))
print(f"Accuracy {ctx['metrics']['acc']:.3f}, stage {ctx['stage'].replace('_', ' ')}.")
@
\end{document}
"""


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_a_template_becomes_a_pdf_with_the_lineage_block(tmp_path: Path):
    template = tmp_path / "t.texw"
    template.write_text(TEMPLATE)
    pdf = render_pdf(template, tmp_path / "out.pdf", {**CTX, "artifacts_dir": str(tmp_path)}, tmp_path / "build")
    text = _pdf_text(pdf)
    assert "0123456789ab (uncommitted changes)" in text and "d1a2t3a4" in text and "p1a2r3" in text
    assert "Accuracy 0.875" in text and "stage 06 x." in text


def test_an_error_in_a_chunk_fails_instead_of_printing_a_traceback_into_the_pdf(tmp_path: Path):
    template = tmp_path / "t.texw"
    template.write_text(TEMPLATE.replace("ctx['metrics']['acc']", "ctx['metrics']['missing']"))
    with pytest.raises(StagebookError, match=r"t\.texw: code chunk 1 raised KeyError: 'missing'"):
        render_pdf(template, tmp_path / "out.pdf", {**CTX, "artifacts_dir": str(tmp_path)}, tmp_path / "build")
    assert not (tmp_path / "out.pdf").exists()


def test_a_latex_error_names_the_template_and_the_log(tmp_path: Path):
    template = tmp_path / "t.texw"
    template.write_text(TEMPLATE.replace(r"\end{document}", r"\undefinedmacro \end{document}"))
    with pytest.raises(StagebookError, match=r"t\.texw: LaTeX failed: Undefined control sequence.*report\.log"):
        render_pdf(template, tmp_path / "out.pdf", {**CTX, "artifacts_dir": str(tmp_path)}, tmp_path / "build")


def test_tables_escape_text_and_format_floats():
    out = table(pd.DataFrame({"class": ["a_b", "50%"], "f1": [0.5, 1.0]}))
    assert r"a\_b" in out and r"50\%" in out and "0.500" in out and r"\toprule" in out
    assert tex("x&y#") == r"x\&y\#"
    assert tex("stagebook submit --by NAME") == "stagebook submit -{}-by NAME"  # an option, not an en dash


def test_print_width_widens_a_figure_until_its_text_prints_at_7_pt(tmp_path: Path):
    import json

    from stagebook.report import print_width
    png = tmp_path / "f.png"
    png.write_bytes(b"")
    png.with_suffix(".json").write_text(json.dumps({"width_in": 6.0, "min_font_pt": 10.0}))
    assert print_width(png, 0.8) == 0.8  # 10 pt scaled to 0.8 x 6.7 in / 6 in is 8.9 pt: fine as asked
    assert print_width(png, 0.3) == 0.628  # 0.3 would print 3.3 pt; widened to 7 pt
    png.with_suffix(".json").write_text(json.dumps({"width_in": 12.0, "min_font_pt": 6.0}))
    with pytest.raises(StagebookError, match="would print below 7 pt even at the full text width"):
        print_width(png, 0.5)
    assert print_width(tmp_path / "no_record.png", 0.4) == 0.4  # a figure made elsewhere is printed as asked


def test_a_per_class_table_of_many_classes_fits_a_page():
    import pandas as pd

    from stagebook.report import class_table
    df = pd.DataFrame({"class": [f"c{i}" for i in range(60)], "f1": [i / 60 for i in range(60)]})
    text = class_table(df)
    assert text.count(r"\\") - 2 <= 32 and "c0 " in text and "c59" not in text  # the 30 lowest F1, and a note
    assert "The 30 of 60 classes with the lowest f1" in text
    assert "note" not in class_table(df.head(12)) and class_table(df.head(12)).count("c1") >= 1
