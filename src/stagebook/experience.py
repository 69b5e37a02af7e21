"""The experience report: what the team learnt carrying the project to deployment, as a PDF.

The team writes `reports/experience.md` (what it set out to do, what worked, what did not, what it would do
differently); `stagebook report experience` prints that text followed by the facts the project recorded, so nobody
retypes them: the timeline (git commits, MLflow runs per stage), what each phase of stage 04 and its search found,
the largest error classes from stage 05, and every decision of the champion/challenger gate from the ledger.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import StagebookError

TEAM_TEXT = Path("reports") / "experience.md"
TEMPLATE = Path("reports") / "templates" / "experience_report.texw"
PDF = Path("reports") / "experience_report.pdf"


def _rows(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def timeline(root: Path) -> dict:
    "Git's span and commit count, and per stage: runs, failures, first and last run (MLflow)."
    from .tracking import recent_runs

    log = subprocess.run(["git", "log", "--format=%cs %s"], cwd=root, capture_output=True, text=True).stdout.splitlines()
    text = (f"{len(log)} commit{'' if len(log) == 1 else 's'} from {log[-1][:10]} to {log[0][:10]}." if log else "No git history yet.")
    runs = recent_runs(root, per_stage=10_000)
    table = pd.DataFrame()
    if len(runs):
        table = (runs.groupby("stage").agg(runs=("run_id", "size"), failed=("status", lambda s: int((s != "FINISHED").sum())),
                                          first=("started", "min"), last=("started", "max")).reset_index())
        text += f" {len(runs)} stage runs in MLflow, {int(table.failed.sum())} of them not finished."
    return {"title": "Timeline", "text": text, "tables": [{"caption": "Runs per stage (MLflow)", "rows": _rows(table)}]
            if len(table) else []}


def tuning(root: Path) -> dict:
    "What stage 04's phases measured, and the search's variants best first."
    path = root / "metrics" / "04_tuning.json"
    if not path.is_file():
        return {"title": "Tuning (stage 04)", "text": "Stage 04 has not run yet."}
    m = json.loads(path.read_text())
    said = []
    if "init_loss" in m:
        said.append(f"initial loss {m['init_loss']:.3f} (expected {m.get('init_loss_expected', float('nan')):.3f})")
    if "onebatch_final_loss" in m:
        said.append(f"one batch overfit to loss {m['onebatch_final_loss']:.4f}")
    if "overfit_train_accuracy" in m:
        said.append(f"all data overfit to train accuracy {m['overfit_train_accuracy']:.3f}"
                    f" (valid {m.get('overfit_valid_accuracy', float('nan')):.3f})")
    if "valid_accuracy" in m:
        said.append(f"regularised to valid accuracy {m['valid_accuracy']:.4f} against the best baseline's"
                    f" {m.get('best_baseline_valid_accuracy', float('nan')):.4f}")
    out = {"title": "Tuning (stage 04)", "text": "Phases: " + "; ".join(said) + "." if said else "", "tables": []}
    search = root / "reports" / "04_tuning" / "tables" / "search.csv"
    if search.is_file():
        table = pd.read_csv(search).sort_values("valid_accuracy", ascending=False).head(10).round(4)
        out["tables"].append({"caption": f"The search ({int(m.get('search_variants', len(table)))} variants, best first)",
                              "rows": _rows(table)})
    return out


def errors(root: Path) -> dict:
    "The classes stage 05 found weakest, and the pairs most confused."
    tables = root / "reports" / "05_error_analysis" / "tables"
    out = {"title": "Largest errors (stage 05)", "text": "", "tables": []}
    if not (tables / "per_class.csv").is_file():
        out["text"] = "Stage 05 has not run yet."
        return out
    per_class = pd.read_csv(tables / "per_class.csv", dtype={"class": str}).sort_values("f1").head(5).round(4)
    out["tables"].append({"caption": "The five weakest classes (validation)", "rows": _rows(per_class)})
    if (tables / "most_confused.csv").is_file():
        confused = pd.read_csv(tables / "most_confused.csv", dtype={"actual": str, "predicted": str}).head(5).round(4)
        out["tables"].append({"caption": "Most confused pairs (validation)", "rows": _rows(confused)})
    return out


def gate_decisions(root: Path) -> dict:
    "Every promotion and refusal in the ledger, with its reasons."
    from .promotion import decision_lines

    lines = [f"- {line}" for line in decision_lines(root)]
    return {"title": "Gate decisions", "text": "\n".join(lines) or "No model has been through the gate yet."}


def report_context(root: Path) -> dict:
    from .project_page import load_targets

    root = Path(root).resolve()
    team = root / TEAM_TEXT
    if not team.is_file():
        raise StagebookError(f"{team}: the team's part of the experience report is missing; take it from the template"
                             " (`stagebook update`) and write it.")
    from dataclasses import replace

    from .lineage import compute, model_sha256
    lineage = replace(compute(root, "n/a", "cpu"), model_sha256=model_sha256(root), model_role="current").as_dict()
    return {"stage": "experience_report", "root": str(root), "project": load_targets(root / "project_page.md").project,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "team_text": team.read_text(),
            "lineage": lineage, "facts": [timeline(root), tuning(root), errors(root), gate_decisions(root)],
            "artifacts_dir": str(root / "reports")}


def write_report(root: Path) -> Path:
    "Render the experience report to reports/experience_report.pdf."
    from .report import project_template, render_pdf

    root = Path(root).resolve()
    template = project_template(root, TEMPLATE, "experience report")
    with tempfile.TemporaryDirectory(prefix="stagebook-experience-") as tmp:
        return render_pdf(template, root / PDF, report_context(root), Path(tmp))
