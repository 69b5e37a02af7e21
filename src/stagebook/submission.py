"""`stagebook submit`: the team's decision that a model is ready for the sealed test.

Stage 06 evaluates only the submitted model, so no `dvc repro` or `dvc exp run` spends a test read by accident: its
DVC dependency is the submission record, not the model file that every training run rewrites.

- The model must be one a stage recorded producing (its sha256 in `lineage/NN.json`), and it must have beaten the
  stage-02 bar on validation (`valid_<metric>` against `best_baseline_valid_<metric>` in that stage's metrics).
- Its bytes are kept as `models/submitted/<sha256[:16]>.pth`, so later training cannot change what is evaluated.
- The record, `data/submission.json`, is committed with the code; the ledger logs the submission (and a refusal).
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .errors import StagebookError
from .iorw import atomic_write_text
from .lineage import file_sha256
from .project import data_record, settings
from .project_page import load_targets
from .seal import Ledger

SUBMITTED_DIR = Path("models") / "submitted"


def submission_path(root: Path) -> Path:
    return data_record(root, "submission")


PLACEHOLDER = {"model_sha256": None, "note": "no model submitted yet: `stagebook submit --by NAME --reason TEXT` writes"
               " this file; stage 06 evaluates only the model named here"}


def write_placeholder(root: Path) -> Path:
    "The record of a project that has submitted nothing (stage 06 depends on this file, so it must exist)."
    path = submission_path(root)
    atomic_write_text(path, json.dumps(PLACEHOLDER, indent=2) + "\n")
    return path


def read_submission(root: Path) -> dict | None:
    "The current submission record, or None when the team has not submitted a model."
    path = submission_path(root)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not record.get("model_sha256"):  # the template's placeholder: nothing submitted yet
            return None
        record["model"]  # noqa: B018 (must be there)
        return record
    except (ValueError, KeyError, TypeError):
        raise StagebookError(f"{path}: not a readable submission record; restore it from git or submit again with"
                             " `stagebook submit`.") from None


def producing_stage(root: Path, sha256: str) -> str | None:
    "The stage whose recorded lineage says it produced the model with this hash (the latest such run)."
    for lineage_file in sorted((root / "lineage").glob("*.json"), reverse=True):
        try:
            record = json.loads(lineage_file.read_text())
        except ValueError:
            raise StagebookError(f"{lineage_file.relative_to(root)}: not readable JSON; re-run its stage (`dvc repro`)"
                                 " or restore the file from git.") from None
        if record.get("model_sha256") == sha256 and record.get("model_role") == "produced":
            return record.get("stage") or lineage_file.stem
    return None


def validation_record(root: Path, stage: str) -> dict:
    "The producing stage's validation number and the stage-02 bar, in the project page's primary metric."
    targets = load_targets(root / "project_page.md")
    metrics_file = root / "metrics" / f"{stage}.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    valid_key, bar_key = f"valid_{targets.primary_metric}", f"best_baseline_valid_{targets.primary_metric}"
    missing = [k for k in (valid_key, bar_key) if k not in metrics]
    if missing:
        raise StagebookError(f"{metrics_file.relative_to(root)}: lacks {', '.join(missing)}; the stage that makes the"
                             f" model must log its validation {targets.primary_metric} and the stage-02 bar.")
    valid, bar = float(metrics[valid_key]), float(metrics[bar_key])
    beats = valid > bar if targets.direction == "maximize" else valid < bar
    return {"metric": targets.primary_metric, "valid": valid, "bar": bar, "beats_bar": beats}


def _track_with_dvc(root: Path, kept: Path) -> None:
    "`dvc add` the kept model, so a clone gets it with `dvc pull` (commit the .dvc file beside it)."
    import subprocess
    if (root / ".dvc").is_dir() and shutil.which("dvc"):
        done = subprocess.run(["dvc", "add", "-q", kept.as_posix()], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise StagebookError(f"dvc add {kept}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")


def submit(root: Path, model: str = "models/model.pth", by: str = "", reason: str = "") -> dict:
    "Submit `model` for the sealed test: checked, its bytes kept, the record written and the ledger told."
    root = root.resolve()
    if not by.strip() or not reason.strip():
        raise StagebookError("stagebook submit: say who submits and why: --by NAME --reason TEXT (both go in the ledger).")
    path = root / model
    if not path.is_file():
        raise StagebookError(f"{model}: no such model file; train it first (`dvc repro` runs stage 04).")
    sha = file_sha256(path)
    current = read_submission(root)
    if current and current["model_sha256"] == sha and (root / current["model"]).is_file():
        return {**current, "already": True}  # submitting the same model twice changes nothing
    stage = producing_stage(root, sha)
    if stage is None:
        raise StagebookError(f"{model} (sha256 {sha[:16]}) is not a model any stage recorded producing; run the stage"
                             " that trains it (`dvc repro`) so its lineage and validation numbers exist.")
    check = validation_record(root, stage)
    from .lineage import code_state
    ledger = Ledger(root, stage="submit", commit=code_state(root)[0])
    detail = {"model": model, "stage": stage, "by": by, "reason": reason, **check}
    if not check["beats_bar"]:
        ledger.append("refused", {**detail, "why": "did not beat the stage-02 bar on validation"}, sha)
        raise StagebookError(f"{model} is refused for the sealed test: validation {check['metric']} {check['valid']:.4f}"
                             f" from {stage} does not beat the stage-02 bar {check['bar']:.4f}; improve it on"
                             " validation first (the refusal is logged in the ledger).")
    kept = SUBMITTED_DIR / f"{sha[:16]}.pth"
    if not (root / kept).is_file() or file_sha256(root / kept) != sha:
        (root / kept).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / kept)
    _track_with_dvc(root, kept)
    record = {"model": kept.as_posix(), "model_sha256": sha, "submitted_from": model, "stage": stage, "by": by,
              "reason": reason, "submitted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "sealed_test_stage": settings(root)["sealed_test_stage"], **check}
    atomic_write_text(submission_path(root), json.dumps(record, indent=2, sort_keys=True) + "\n")
    ledger.append("submit", detail, sha)
    return record
