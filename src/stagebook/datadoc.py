"""The generated block of the data document: statistics rewritten by stage 01 between two markers, prose untouched."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .iorw import atomic_write_text

START, END = "<!-- stagebook:generated:start -->", "<!-- stagebook:generated:end -->"


def replace_generated_block(doc: Path | str, body: str) -> None:
    "Put `body` between the markers of `doc`, keeping everything people wrote around it."
    doc = Path(doc)
    if not doc.is_file():
        raise StagebookError(f"{doc}: data document missing; restore it from the template (git checkout -- {doc.name}).")
    text = doc.read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise StagebookError(f"{doc}: needs exactly one '{START}' line followed by one '{END}' line;"
                             " put them back where the generated statistics belong.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(doc, f"{head}{START}\n{body.strip()}\n{END}{tail}")


def split_statistics(splits: pd.DataFrame) -> str:
    "Markdown: counts per class and split, quarantined items, and the totals."
    usable = splits[splits.status == "ok"]
    counts = pd.crosstab(usable.label, usable.split).reindex(columns=["train", "valid", "test"], fill_value=0)
    counts.loc["total"] = counts.sum()
    counts["all"] = counts.sum(axis=1)
    quarantined = splits[splits.status != "ok"]
    lines = [f"Items: {len(splits)} ({len(usable)} usable, {len(quarantined)} quarantined); "
             f"classes: {usable.label.nunique()}.", "", counts.reset_index().to_markdown(index=False)]
    if len(quarantined):
        lines += ["", "Quarantined:", "", quarantined[["path", "status"]].to_markdown(index=False)]
    return "\n".join(lines)
