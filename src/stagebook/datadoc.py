"""The generated block of the data document: statistics rewritten by stage 01 between two markers, prose untouched."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .iorw import atomic_write_text
from .split import shortfall_sentence

START, END = "<!-- stagebook:generated:start -->", "<!-- stagebook:generated:end -->"


TO_WRITE = "**To be written by the team.**"
ANSWER = re.compile(r"(?<![*\w])\*[^*\s][^*]*\*(?!\*)")  # an *italic answer* under a datasheet question


def mark_unanswered(text: str) -> str:
    """The datasheet with every unanswered question marked: a `##` section whose text has no *italic answer* gets
    a bold 'To be written by the team.' line, so a question left open never looks finished in the PDF."""
    parts = re.split(r"(?m)^(?=## )", text)
    out = []
    for part in parts:
        body = part.split("\n", 1)[1] if part.startswith("## ") and "\n" in part else ""
        answered = ANSWER.search(body) or START in part or TO_WRITE in part
        out.append(part if not part.startswith("## ") or answered else part.rstrip("\n") + f"\n{TO_WRITE}\n\n")
    return "".join(out)


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


def _table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False) if len(df) else "*none*"


def generated_block(splits: pd.DataFrame, summary: dict, balance: pd.DataFrame, leakage: int, seal: dict | None,
                    data_version: str, chart: str | None = None, shown: int = 20,
                    unsealed: dict[str, list[str]] | None = None, self_test: str = "",
                    cross_split: pd.DataFrame | None = None, images: str = "",
                    shortfalls: pd.DataFrame | None = None) -> str:
    "Markdown for the data document: counts, audit findings, leakage, balance, seal and data version."
    usable = splits[splits.status == "ok"]
    counts = pd.crosstab(usable.label, usable.split).reindex(columns=["train", "valid", "test"], fill_value=0)
    counts.loc["total"] = counts.sum()
    counts["all"] = counts.sum(axis=1)
    quarantined = splits[splits.status.str.startswith("quarantined")]
    missing = splits[splits.status == "missing"]
    converted = usable[usable.converted != ""].converted.value_counts()
    worst = balance.sort_values("max_deviation_points", ascending=False).head(1)
    lines = [f"Data version `{data_version}`; test set sealed as `{seal['list_hash'][:16]}` ({seal['count']} items)."
             if seal else f"Data version `{data_version}`; test set not sealed yet.", ""]
    if unsealed and any(unsealed.values()):  # the seal and the data disagree: say so, and how to accept it
        what = ", ".join(f"{len(paths)} {kind}" for kind, paths in unsealed.items() if paths)
        lines += [f"**Not sealed yet:** the test split differs from the seal ({what} test items). The sealed stage"
                  " refuses to read until the team accepts the new test set: `stagebook seal --reason TEXT` (logged in"
                  " the ledger; the read budget starts again on the new seal).", ""]
    if chart:
        lines += [f"![Items per class and split]({chart})", ""]
    shown_counts = counts
    if len(counts) - 1 > 40:  # many classes: the 30 furthest from the target shares, and the total
        far = balance.sort_values("max_deviation_points", ascending=False, kind="stable").label.head(30)
        shown_counts = counts.loc[[*far, "total"]]
    lines += [shown_counts.reset_index().rename(columns={"label": "class"}).to_markdown(index=False), "",
              *([f"*The 30 of {len(counts) - 1} classes furthest from the target shares; `stagebook split` prints them"
                 " all.*", ""] if shown_counts is not counts else []),
              "**Audit.** " + "; ".join([
                  f"{summary['items']} items, {summary['usable']} usable, {summary['quarantined']} quarantined"
                  + (f", {len(missing)} no longer present" if len(missing) else ""),
                  f"{summary['converted']} converted" + (f" ({', '.join(f'{k} {v}' for k, v in converted.items())})" if len(converted) else ""),
                  f"{summary['exact_duplicate_items']} exact duplicates, {summary['same_pixel_items']} same-pixel copies,"
                  f" {summary['near_duplicate_pairs']} near-duplicate pairs",
                  f"{summary['duplicate_clusters']} duplicate clusters (largest {summary['largest_cluster']} items)",
                  f"{summary['label_conflicts']} label conflicts",
                  f"classes too small to learn: {', '.join(summary['small_classes']) or 'none'}"]) + ".", "",
              *([f"**Images.** {images[0].upper() + images[1:]}.", ""] if images else []),
              f"**Cross-split leakage.** {leakage} duplicate clusters or groups straddle two splits.", ""]
    if self_test:  # what a leakage figure of 0 is worth: how many planted copies the same search found
        n_cross = 0 if cross_split is None else len(cross_split)
        lines += [f"**Near copies.** {self_test[0].upper() + self_test[1:]}; cross-split near copies: {n_cross}"
                  + (" (listed below)." if n_cross else "."), ""]
        if n_cross:
            lines += [_table(cross_split.head(shown).round({"distance": 4})), ""]
    if "relabeled_from" in splits:
        relabeled = splits[splits.relabeled_from.fillna("") != ""]
        lines += [f"**Reviewed relabels.** {len(relabeled)} label(s) corrected from `data/relabels.csv`"
                  + (":" if len(relabeled) else "."), ""]
        if len(relabeled):
            lines += [_table(relabeled[["path", "relabeled_from", "label", "split"]].head(shown)
                             .rename(columns={"relabeled_from": "was", "label": "now"})), ""]
    if len(worst):
        lines += [f"**Class balance.** Largest deviation from the target split proportions:"
                  f" {worst.max_deviation_points.iloc[0]:.1f} points (class {worst.label.iloc[0]})"
                  + (f". **Warning:** {shortfall_sentence(shortfalls)}:" if shortfalls is not None and len(shortfalls)
                     else "; every class is within 2 points."), ""]
        if shortfalls is not None and len(shortfalls):
            lines += [_table(shortfalls.head(shown).rename(columns={"points_off": "points off",
                                                                     "best_possible": "best possible",
                                                                     "largest_unit": "largest unit"})), ""]
    lines += [f"### Quarantined ({len(quarantined)})", "",
              _table(quarantined[["path", "status"]].head(shown).rename(columns={"status": "reason"})), ""]
    if len(quarantined) > shown:
        lines += [f"... and {len(quarantined) - shown} more (status column of the split manifest).", ""]
    dup = usable[usable.cluster != ""]
    clusters = (dup.groupby("cluster").agg(items=("path", "size"), labels=("label", lambda s: ", ".join(sorted(set(s)))),
                                           splits=("split", lambda s: ", ".join(sorted(set(s)))),
                                           example=("path", "min"))
                .sort_values("items", ascending=False).reset_index())
    lines += [f"### Duplicate clusters ({len(clusters)}; largest first)", "", _table(clusters.head(shown // 2))]
    conflicts = clusters[clusters.labels.str.contains(",")]
    if len(conflicts):
        lines += ["", f"### Label conflicts ({len(conflicts)})", "", _table(conflicts.head(shown))]
    return "\n".join(lines)
