"""`stagebook exps`: DVC experiments in one screen.

`dvc exp show` prints a column for every param of every stage and every dependency's hash: with seven stages no
terminal is wide enough and it shows "…" throughout. This reads the same data (`dvc exp show --json`) and keeps
what a reader compares: the headline metrics that differ between rows, and the params each experiment changed.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .errors import StagebookError


def collect(root: Path) -> list[dict]:
    "One record per row of `dvc exp show`: name, headline metrics ({'04:valid_acc': 0.97}) and params."
    done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise StagebookError(f"dvc exp show failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    rows = []

    def add(entry: dict, name: str) -> None:
        data = entry.get("data") or {}
        metrics = {f"{Path(path).stem[:2]}:{key}": value
                   for path, record in sorted((data.get("metrics") or {}).items())
                   for key, value in sorted(((record or {}).get("data") or {}).items())}
        params = {f"{Path(path).stem[:2]}:{key}": value
                  for path, record in sorted((data.get("params") or {}).items())
                  for key, value in sorted(((record or {}).get("data") or {}).items())}
        rows.append({"name": name, "metrics": metrics, "params": params, "error": bool(entry.get("error"))})

    def label(entry: dict) -> str:
        rev = entry.get("rev") or ""
        return entry.get("name") or (rev[:7] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev)

    for top in json.loads(done.stdout or "[]"):
        add(top, label(top))
        for experiment in top.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                add(revision, f"  {experiment.get('name') or label(revision)}")
    return rows


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e4 else f"{value:.4g}"
    return "-" if value is None else str(value)


PARAMS_ROOM = 24  # characters kept for the changed-params column before metric columns are dropped


def table(rows: list[dict], width: int = 120) -> str:
    """Name, the headline metrics whose values differ between rows (all of them when nothing differs), changed params.

    When the metric columns do not fit `width`, the earliest stages' columns go first (the model and test numbers are
    what an experiment is compared on) and a last line names what was left out."""
    if not rows:
        return ""
    keys = sorted({k for row in rows for k in row["metrics"]})
    varying = [k for k in keys if len({_text(row["metrics"].get(k)) for row in rows}) > 1]
    shown = varying or keys
    base = rows[1]["params"] if len(rows) > 1 else rows[0]["params"]  # the commit the experiments start from
    names = [row["name"] + (" (failed)" if row["error"] else "") for row in rows]
    cells = {k: [_text(row["metrics"].get(k)) for row in rows] for k in shown}
    changed = [" ".join(f"{k}={_text(v)}" for k, v in row["params"].items() if base.get(k) != v) or "-" for row in rows]
    name_width = max(map(len, ["experiment", *names]))
    column = {k: max(len(k), *map(len, values)) for k, values in cells.items()}
    dropped = []
    while shown and name_width + sum(column[k] + 2 for k in shown) + 2 + PARAMS_ROOM > width:
        dropped.append(shown.pop(0))
    lines = [["experiment".ljust(name_width), *(k.rjust(column[k]) for k in shown), "changed params"]]
    lines += [[name.ljust(name_width), *(cells[k][i].rjust(column[k]) for k in shown), changed[i]]
              for i, name in enumerate(names)]
    out = []
    for line in lines:
        text = "  ".join(line)
        out.append(text if len(text) <= width else text[:width - 1] + "…")
    if dropped:
        note = f"(not shown: {', '.join(dropped)}; a wider --width shows them)"
        out.append(note if len(note) <= width else note[:width - 1] + "…")
    return "\n".join(out)
