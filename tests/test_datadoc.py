"""The data document: the generated block is rewritten between markers, prose kept; Markdown renders to LaTeX."""
import re
from pathlib import Path

import pytest

from stagebook import StagebookError
from stagebook.datadoc import END, START, generated_block, replace_generated_block
from stagebook.report import markdown_to_latex
from stagebook.split import class_balance, split_assignments
from test_split import PROPS, items

SUMMARY = {"items": 61, "usable": 60, "quarantined": 1, "converted": 0, "exact_duplicate_items": 0, "same_pixel_items": 0,
           "near_duplicate_pairs": 2, "duplicate_clusters": 1, "largest_cluster": 3, "label_conflicts": 0, "small_classes": []}


def _splits():
    m = items(61)
    m["converted"] = ""
    m.loc[60, "status"] = "quarantined: zero-byte file"
    m.loc[[0, 3, 6], "cluster"] = "dup:000000000000"
    return split_assignments(m, PROPS, 0)


def test_generated_block_is_replaced_and_prose_kept(tmp_path: Path):
    doc = tmp_path / "data_doc.md"
    doc.write_text(f"# Doc\nwords people wrote\n{START}\nold\n{END}\nmore words\n")
    splits = _splits()
    seal = {"list_hash": "ab" * 32, "count": 9}
    replace_generated_block(doc, generated_block(splits, SUMMARY, class_balance(splits, PROPS), 0, seal, "d1a2", "fig.png"))
    text = doc.read_text()
    assert "words people wrote" in text and "more words" in text and "\nold\n" not in text
    assert re.search(r"\|\s*total\s*\|.*\|\s*60\s*\|", text)
    assert "Data version `d1a2`; test set sealed as `abababababababab` (9 items)." in text
    assert "![Items per class and split](fig.png)" in text
    assert "61 items, 60 usable, 1 quarantined" in text and "0 duplicate clusters or groups straddle" in text
    assert "| x/60.png | quarantined: zero-byte file |" in re.sub(r" +", " ", text)
    assert "dup:000000000000 | 3 |" in re.sub(r" +", " ", text)


def test_data_doc_without_markers_is_refused_and_left_alone(tmp_path: Path):
    doc = tmp_path / "data_doc.md"
    doc.write_text("# Doc without markers\n")
    with pytest.raises(StagebookError, match="needs exactly one"):
        replace_generated_block(doc, "x")
    assert doc.read_text() == "# Doc without markers\n"


def test_markdown_to_latex_covers_what_our_documents_use(tmp_path: Path):
    image = tmp_path / "chart.png"
    image.write_bytes(b"png")
    md = ("# Title\n## Part\nSome *emphasis* across\na line, **bold**, `code_x` and 50% [a link](http://x).\n\n"
          "- one\n- two\n\n| a | b |\n|:--|--:|\n| x_y | 1 |\n\n![chart](somewhere/chart.png)\n<!-- hidden -->\n")
    out = markdown_to_latex(md, lambda ref: image if ref.endswith("chart.png") else None)
    assert r"\section*{Title}" in out and r"\subsection*{Part}" in out
    assert r"\emph{emphasis} across a line, \textbf{bold}, \texttt{code\_x} and 50\% a link." in out
    assert "\\begin{itemize}\n\\item one\n\\item two\n\\end{itemize}" in out
    assert r"\begin{tabular}{lr}" in out and r"x\_y & 1 \\" in out
    assert rf"\includegraphics[width=0.7\textwidth]{{{image.as_posix()}}}" in out and "hidden" not in out


def test_unanswered_datasheet_questions_are_marked_for_the_team():
    from stagebook.datadoc import TO_WRITE, mark_unanswered
    text = ("# Data document\n\n## Motivation\nWhy? *Because.*\n\n## Uses\nWhat for?\n\n## Generated statistics\n"
            "<!-- stagebook:generated:start -->\nx\n<!-- stagebook:generated:end -->\n")
    marked = mark_unanswered(text)
    assert marked.count(TO_WRITE) == 1 and marked.index(TO_WRITE) > marked.index("## Uses")
    assert mark_unanswered(marked) == marked  # once
