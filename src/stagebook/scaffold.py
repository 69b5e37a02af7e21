"""`stagebook stage new NN_name`: a new stage, wired the way the template's stages are.

It writes the notebook (Colab set-up cell, title, `parameters` cell, `stage.init`), its params file, its `dvc.yaml`
entry (after the last stage, reading that stage's metrics), and with `report=True` a Pweave report template.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from . import colab, notebooks
from .errors import StagebookError
from .project import STAGE_NAME, Stage, stages

REPORT_TEMPLATE = r"""<<echo=False, results='tex'>>=
from pathlib import Path
from stagebook.project_page import load_targets
from stagebook.report import lineage_block, preamble, report_context, table, tex
import pandas as pd

ctx = report_context()
m = ctx["metrics"]
targets = load_targets(Path(ctx["root"]) / "project_page.md")
print(preamble("Stage {title}", targets.project, ctx))
@

\begin{{document}}
\maketitle

\section*{{Lineage}}
<<echo=False, results='tex'>>=
print(lineage_block(ctx))
@

\section*{{Metrics}}
<<echo=False, results='tex'>>=
shown = {{k: v for k, v in m.items() if isinstance(v, (int, float))}}
print(table(pd.DataFrame({{"metric": list(shown), "value": [float(v) for v in shown.values()]}}))
      if shown else tex("This stage logged no metric yet: call stage.log_metrics in the notebook."))
@

\end{{document}}
"""


def _cell(kind: str, cell_id: str, source: str, tags: list[str] | None = None) -> dict:
    cell = {"cell_type": kind, "id": cell_id, "metadata": {"tags": tags} if tags else {}, "source": source.splitlines(True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def stage_notebook(name: str, repo_url: str = "") -> dict:
    "The skeleton every stage starts from."
    number, title = name[:2], name[3:].replace("_", " ")
    return {"cells": [
        _cell("code", f"{number}-setup", colab.setup_cell(repo_url)),
        _cell("markdown", f"{number}-00", f"# {number} · {title.capitalize()}\nWhat this stage answers, and what it leaves behind."),
        _cell("code", f"{number}-01", f"# Parameters: defaults equal params/{name}.yaml; `stagebook run` injects that"
                                      " file plus --set overrides.\nseed = 0", ["parameters"]),
        _cell("code", f"{number}-02", "from stagebook import stage\n\nctx = stage.init(seed)"),
        _cell("code", f"{number}-03", "stage.log_metrics({})  # the numbers this stage hands on (metrics/"
                                      f"{name}.json)\nstage.log_headline()  # the few `dvc metrics show` tabulates,"
                                      " e.g. valid_acc=0.97"),
    ], "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5}


def _dvc_entry(name: str, previous: Stage | None, report: bool) -> str:
    deps = [f"nbs/{name}.ipynb"] + ([f"metrics/{previous.name}.json"] if previous else [])
    deps += [f"reports/templates/{name}.texw"] if report else []
    outs = [f"reports/executed/{name}.ipynb", f"reports/{name}"] + ([f"reports/{name}.pdf"] if report else [])
    lines = [f"  {name}:", f"    cmd: stagebook run {name}", "    deps:", *(f"      - {d}" for d in deps),
             "    params:", f"      - params/{name}.yaml:", "    outs:",
             *(line for o in outs for line in (f"      - {o}:", "          persist: true")),  # see dvc.yaml's head
             f"      - lineage/{name}.json:", "          cache: false", "          persist: true",
             f"      - metrics/{name}.json:", "          cache: false", "          persist: true",
             "    metrics:", f"      - metrics/headline/{name}.json:", "          cache: false", "          persist: true"]
    return "\n".join(lines) + "\n"


def new_stage(root: Path, name: str, report: bool = False) -> list[Path]:
    "Add stage `name` (`07_deployment`) to the project at `root`; returns the files written or changed."
    if not STAGE_NAME.match(name):
        raise StagebookError(f"stage name {name!r}: expected two digits, an underscore and a name, e.g. 07_deployment.")
    existing = stages(root)
    if any(s.name[:2] == name[:2] for s in existing):
        clash = next(s.name for s in existing if s.name[:2] == name[:2])
        raise StagebookError(f"{root / 'nbs'}: stage number {name[:2]} is taken by {clash}; pick a free number.")
    pipeline = root / "dvc.yaml"
    spec = yaml.safe_load(pipeline.read_text(encoding="utf-8")) if pipeline.is_file() else None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), dict):
        raise StagebookError(f"{pipeline}: missing or without a `stages:` mapping; restore it from git.")
    previous = max((s for s in existing if s.name < name), key=lambda s: s.name, default=None)
    stage = Stage(name, root)
    repo_url = ""
    if existing:
        first = notebooks.read(existing[0].notebook)["cells"]
        repo_url = next((colab.repo_url_of("".join(c["source"])) for c in first if c.get("cell_type") == "code"
                         and colab.is_setup_cell("".join(c["source"]))), "")
    written = [notebooks.write_clean(stage_notebook(name, repo_url), stage.notebook)]
    stage.params_file.parent.mkdir(parents=True, exist_ok=True)
    stage.params_file.write_text("seed: 0\n", encoding="utf-8")
    written.append(stage.params_file)
    from .schema import schema_file
    schema = schema_file(stage.params_file)
    schema.write_text("# Types and ranges of this stage's params, checked before a kernel starts (stagebook.schema).\n"
                      "seed: {type: int, min: 0}\n", encoding="utf-8")
    written.append(schema)
    if report:
        stage.report_template.parent.mkdir(parents=True, exist_ok=True)
        title = f"{name[:2]}: {name[3:].replace('_', ' ')}"
        stage.report_template.write_text(REPORT_TEMPLATE.format(title=title), encoding="utf-8")
        written.append(stage.report_template)
    text = pipeline.read_text(encoding="utf-8")
    if not spec["stages"]:  # `stages: {}` (a pipeline with no stage yet) becomes a block the entry can join
        import re
        text = re.sub(r"(?m)^stages:\s*\{\s*\}\s*$", "stages:", text)
    pipeline.write_text(text + ("" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n")
                        + _dvc_entry(name, previous, report), encoding="utf-8")
    written.append(pipeline)
    ignore = root / "reports" / ".gitignore"  # the stage's outputs are DVC's, like every other stage's
    if ignore.is_file():
        lines = ignore.read_text(encoding="utf-8").splitlines()
        wanted = [f"/{name}"] + ([f"/{name}.pdf"] if report else [])
        missing = [w for w in wanted if w not in lines]
        if missing:
            ignore.write_text("\n".join(lines + missing) + "\n", encoding="utf-8")
    return written

