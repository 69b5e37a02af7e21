"""What the sealed-test stage's notebook calls: the submitted model and either its test items (a first read) or its
recorded predictions (a reuse), with its standing against the seal's read budget.

The rules live here, not in the notebook: the seal is verified first; only a submitted model is evaluated; it must
still be the bytes that were submitted and must have beaten the stage-02 bar on validation; a model already
evaluated on this seal reuses its result; a new model past the budget is refused. Every refusal is in the ledger.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def accuracy_interval(correct, level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy and its exact (Clopper-Pearson) confidence interval over `correct`, one 0/1 per test item.

    Exact, not bootstrapped: a resampled interval collapses to a point when every item is right (or wrong), which
    would flag any validation score that is not perfect as "outside the CI". It is conservative at every n.
    """
    from scipy.stats import beta

    correct = np.asarray(correct, dtype=float).ravel()
    if correct.size == 0:
        raise ValueError("accuracy_interval: no test items")
    if not 0 < level < 1:
        raise ValueError(f"accuracy_interval: level {level!r} must lie strictly between 0 and 1")
    n, k = correct.size, int(correct.sum())
    alpha = 1 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return k / n, low, high


def latency_ms(model, shape: tuple[int, ...], repeats: int = 200, warmup: int = 10) -> float:
    """Median milliseconds of one forward pass at `shape` (batch first), on the model's device, without gradients
    (`gate.time_calls`, the promotion gate's timer). It needs no test item: zeros of the right shape cost the same."""
    import torch

    from .gate import time_calls

    first = next(model.parameters(), None)
    (times,) = time_calls([model], torch.zeros(*shape, device=first.device if first is not None else "cpu"), repeats,
                          warmup)
    return 1000 * float(np.median(times))
