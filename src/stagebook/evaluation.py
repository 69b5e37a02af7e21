"""What the sealed-test stage's notebook calls: the submitted model and either its test items (a first read) or its
recorded predictions (a reuse), with its standing against the seal's read budget.

The rules live here, not in the notebook: the seal is verified first; only a submitted model is evaluated; it must
still be the bytes that were submitted and must have beaten the stage-02 bar on validation; a model already
evaluated on this seal reuses its result; a new model past the budget is refused. Every refusal is in the ledger.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import stage
from .lineage import file_sha256
from .seal import SealedTestSet
from .submission import read_submission

NOT_SUBMITTED = ("no model has been submitted for the sealed test; when a model beats the stage-02 bar on validation:"
                 " `stagebook submit --by NAME --reason TEXT`, then `dvc repro`")


@dataclass
class SealedEvaluation:
    submission: dict
    model_path: Path
    model_sha256: str
    items: pd.DataFrame | None  # the test items to predict, on a first read
    predictions: pd.DataFrame | None  # the recorded predictions, on a reuse
    rank: int  # this model is the rank-th evaluated on this seal ...
    budget: int  # ... of at most `budget`
    seal: dict
    sealed: SealedTestSet

    @property
    def reused(self) -> bool:
        return self.items is None

    def record(self, predictions: pd.DataFrame, metrics: dict) -> None:
        "Keep a first read's predictions and result in the ledger, so this model never reads the test set again."
        if not self.reused:
            self.sealed.record_predictions(self.model_sha256, predictions, metrics)
            self.predictions = predictions


def open_submitted(root: Path | None = None) -> SealedEvaluation | None:
    "The submitted model's evaluation on the current seal, or None when nothing is submitted (logged refusals raise)."
    ctx = stage.context()
    root = Path(root or ctx.root).resolve()
    sealed = SealedTestSet(root, reader=ctx.name or "", commit=ctx.lineage.get("code_commit", ""))
    sealed._guard()  # a person at the notebook, or another stage: refused and logged before anything is read
    seal = sealed.verify()
    submission = read_submission(root)
    if submission is None:
        return None
    sha, model = submission["model_sha256"], root / submission["model"]
    if not model.is_file():
        sealed.refuse(f"{submission['model']}: the submitted model is missing; restore it (`dvc pull` or"
                      " `dvc checkout`) or submit again with `stagebook submit`.", sha)
    if file_sha256(model) != sha:
        sealed.refuse(f"{submission['model']}: its bytes are not the submitted model's (sha256 {sha[:16]}); restore"
                      " it or submit again.", sha)
    if not submission.get("beats_bar"):
        sealed.refuse(f"the submitted model's validation {submission.get('metric', 'metric')}"
                      f" {submission.get('valid', float('nan')):.4f} does not beat the stage-02 bar"
                      f" {submission.get('bar', float('nan')):.4f}; it is not evaluated on the sealed test.", sha)
    predictions = sealed.recorded_predictions(sha)
    items = sealed.read(sha) if predictions is None else None
    rank, budget = sealed.standing(sha)
    return SealedEvaluation(submission, model, sha, items, predictions, rank, budget, seal, sealed)


def validation_gap(valid: float, test: float, ci_low: float, ci_high: float) -> dict:
    """Validation beside the test CI: optimistic validation (above the CI) is the first sign of leakage or of
    overfitting to the validation split; a gap smaller than the CI's half-width is noise."""
    half_width = (ci_high - ci_low) / 2
    return {"valid": valid, "gap": valid - test, "ci_half_width": half_width,
            "flagged": bool(valid > ci_high or valid < ci_low)}
