"""The project page: prose for people, and YAML front matter holding the machine-readable targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import StagebookError

REQUIRED = {"project": "a one-line name", "primary_metric": "e.g. accuracy", "target": "e.g. 0.95",
            "latency_budget_ms": "milliseconds per item on the target machine, e.g. 5"}


@dataclass(frozen=True)
class Targets:
    project: str
    primary_metric: str
    target: float
    latency_budget_ms: float
    direction: str = "maximize"
    human_baseline: float | None = None

    def met(self, value: float) -> bool:
        "Whether `value` of the primary metric reaches the target in the page's direction."
        return value >= self.target if self.direction == "maximize" else value <= self.target


def front_matter(page: Path | str) -> dict:
    page = Path(page)
    if not page.is_file():
        raise StagebookError(f"{page}: project page missing; restore it from the template and fill in its targets.")
    text = page.read_text(encoding="utf-8")
    parts = text.split("---", 2)
    if not text.startswith("---") or len(parts) < 3:
        raise StagebookError(f"{page}: no YAML front matter; start the file with a '---' line, the targets, and a"
                             " closing '---' line.")
    try:
        meta = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as err:
        # parts[1] starts on the opening '---' line, so its line i is the file's line i + 1
        start, mark = getattr(err, "context_mark", None), getattr(err, "problem_mark", None)
        where = (f" at line {start.line + 1} ({err.context}, still open at line {mark.line + 1})" if start and mark
                 else f" at line {mark.line + 1} ({err.problem})" if mark else "")
        raise StagebookError(f"{page}: front matter is not valid YAML{where}; fix its syntax.") from None
    if not isinstance(meta, dict):
        raise StagebookError(f"{page}: front matter must be `key: value` lines.")
    return meta


def load_targets(page: Path | str) -> Targets:
    "The targets from the page's front matter, every required field present and typed."
    page = Path(page)
    meta = front_matter(page)
    for key, hint in REQUIRED.items():
        if meta.get(key) in (None, ""):
            raise StagebookError(f"{page}: front matter lacks '{key}'; add `{key}:` ({hint}) between the --- lines.")
    for key in ("target", "latency_budget_ms", "human_baseline"):
        if meta.get(key) is not None and not isinstance(meta[key], (int, float)):
            raise StagebookError(f"{page}: '{key}' must be a number, got {meta[key]!r}.")
    direction = meta.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise StagebookError(f"{page}: 'direction' must be maximize or minimize, got {direction!r}.")
    return Targets(str(meta["project"]), str(meta["primary_metric"]), float(meta["target"]),
                   float(meta["latency_budget_ms"]), direction,
                   None if meta.get("human_baseline") is None else float(meta["human_baseline"]))
