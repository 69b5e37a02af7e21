"""`stagebook promote`: register the model stage 06 evaluated, and let it replace the champion only through the gate.

- The challenger is the submitted model with a recorded sealed-test result on the current seal (stage 06 ran).
- With no champion yet, it becomes champion if it meets the project page's targets (metric and latency).
- Otherwise the gate (`stagebook.gate`) compares it with the champion on the same sealed items, reusing both recorded
  predictions (no test read), and times both models on identical inputs.
- A pass moves the `champion` alias (the old one becomes `previous_champion`); a refusal writes the gate's numbers
  to `reports/gate/` and says which test failed. A named person may override with a written reason.
- Every decision is appended to the test ledger; the reason of an override goes on the version's tags too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import __version__, gate, registry
from .errors import StagebookError
from .lineage import file_sha256
from .seal import Ledger, latest_result, read_seal, result_predictions
from .submission import read_submission

GATE_DIR = Path("reports") / "gate"


@dataclass
class Decision:
    promoted: bool
    version: int
    champion_before: int | None
    lines: list[str] = field(default_factory=list)
    verdict: gate.Verdict | None = None


def _result(root: Path, sha: str, list_hash: str) -> tuple[pd.DataFrame, dict] | None:
    "This model's recorded predictions on this seal (checked against their hash) and its result entry, or None."
    entry = latest_result(Ledger(root).entries(), sha, list_hash)
    predictions = None if entry is None else result_predictions(root, entry)
    return None if predictions is None else (predictions, entry)


def _targets(root: Path):
    from .project_page import front_matter, load_targets
    page = root / "project_page.md"
    fm = front_matter(page)
    rule = gate.check_rule(str(fm.get("promote_if", gate.DEFAULT_RULE)), str(page))
    tolerance = fm.get("latency_tolerance", gate.DEFAULT_TOLERANCE)
    batch = fm.get("latency_batch", 64)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise StagebookError(f"{page}: latency_tolerance = {tolerance!r}; expected a number >= 0 (0.10 allows 10% slower).")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise StagebookError(f"{page}: latency_batch = {batch!r}; expected a whole number >= 1.")
    return load_targets(page), rule, float(tolerance), batch


def _tags(root: Path, sha: str, seal: dict, entry: dict) -> dict:
    "The version's tags: what made it (04's lineage), what tested it (06's, when 06's last run used these weights)."
    def lineage(stage: str) -> dict:
        path = root / "lineage" / f"{stage}.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        return record if record.get("model_sha256") == sha else {}

    made, tested = lineage("04_tuning"), lineage("06_sealed_test")
    source = made or tested
    tags = {"code_commit": source.get("code_commit", ""), "data_version": source.get("data_version", ""),
            "params_hash": source.get("params_hash", ""), "seal_hash": seal["list_hash"],
            "stagebook_version": __version__, "test_accuracy": entry["detail"]["metrics"].get("accuracy", "")}
    metrics_file = root / "metrics" / "06_sealed_test.json"
    if tested and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        tags.update({k: metrics.get(m, "") for k, m in (("test_ci_low", "test_accuracy_ci_low"),
                                                         ("test_ci_high", "test_accuracy_ci_high"),
                                                         ("latency_ms", "latency_ms"))})
    return tags


def _latency(root: Path, champion, challenger, batch: int, repeats: int) -> dict[int, dict]:
    import torch

    from .predictor import load_checkpoint

    a, meta = load_checkpoint(registry.weights(root, champion))
    b, meta_b = load_checkpoint(registry.weights(root, challenger))
    out = {}
    for size in sorted({1, batch}):
        generator = torch.Generator().manual_seed(size)
        shape = (size, meta.get("channels", 1), meta["image_size"], meta["image_size"])
        inputs = torch.rand(shape, generator=generator)
        if (meta_b.get("channels", 1), meta_b["image_size"]) != (shape[1], shape[2]):
            raise StagebookError("the challenger reads images of another size or channel count than the champion;"
                                 " the gate times both on identical inputs, so promote it with --override and a reason.")
        ta, tb = gate.time_pair(a, b, inputs, repeats=repeats)
        out[size] = gate.p95_ratio(ta, tb)
    return out


def promote(root: Path, by: str = "", reason: str = "", override: bool = False, repeats: int = 200) -> Decision:
    "Register stage 06's model and decide whether it becomes champion (see the module doc)."
    root = Path(root).resolve()
    submission = read_submission(root)
    seal = read_seal(root)
    if submission is None or seal is None:
        raise StagebookError("stagebook promote: nothing to promote: submit a model (`stagebook submit`) and evaluate"
                             " it on the sealed test (`dvc repro`) first.")
    sha = submission["model_sha256"]
    found = _result(root, sha, seal["list_hash"])
    if found is None:
        raise StagebookError(f"stagebook promote: the submitted model {sha[:16]} has no sealed-test result on this seal"
                             " yet; run stage 06 (`dvc repro`) first.")
    predictions, entry = found
    if override and (not by.strip() or not reason.strip()):
        raise StagebookError("stagebook promote --override: needs --by NAME and --reason TEXT (they go in the ledger"
                             " and on the model version).")
    targets, rule, tolerance, batch = _targets(root)
    weights = root / submission["model"]  # the submitted bytes, kept apart from later training
    if not weights.is_file() or file_sha256(weights) != sha:
        raise StagebookError(f"{submission['model']}: not the submitted bytes ({sha[:16]}); restore them (`dvc checkout`).")
    challenger = registry.register(root, weights, _tags(root, sha, seal, entry))
    champion = registry.by_alias(root, registry.CHAMPION)
    ledger = Ledger(root, "stagebook promote", "")
    lines, verdict = [], None
    if champion is not None and champion.version == challenger.version:
        return Decision(True, int(challenger.version), None, [f"version {challenger.version} is already the champion"])
    if champion is None:
        accuracy = float(entry["detail"]["metrics"].get("accuracy", float("nan")))
        latency = challenger.tags.get("latency_ms", "")
        meets = targets.met(accuracy) and (latency == "" or float(latency) <= targets.latency_budget_ms)
        passed = meets
        lines.append(f"first champion: test accuracy {accuracy:.4f} against the target {targets.target}"
                     f"{'' if latency == '' else f', latency {float(latency):.2f} ms against {targets.latency_budget_ms} ms'}:"
                     f" {'met' if meets else 'NOT met'}")
    else:
        champ = _result(root, champion.tags.get("sha256", ""), seal["list_hash"])
        if champ is None:
            raise StagebookError(f"the champion (version {champion.version}) has no recorded predictions on this seal,"
                                 " so the two cannot be compared on the same items; submit the champion again and run"
                                 " stage 06 (one read), or promote with --override and a reason.")
        both = champ[0].merge(predictions, on="path", suffixes=("_champion", "_challenger"))
        if both.empty:
            raise StagebookError("the champion's and the challenger's recorded predictions share no test item.")
        verdict = gate.judge((both.predicted_champion == both.label_champion).to_numpy(),
                             (both.predicted_challenger == both.label_challenger).to_numpy(),
                             _latency(root, champion, challenger, batch, repeats), rule, tolerance)
        passed = verdict.passed
        lines += verdict.reasons()
    detail = {"version": int(challenger.version), "sha256": sha, "champion_before": None if champion is None
              else int(champion.version), "passed": passed, "why": lines,
              **({"numbers": verdict.numbers, "latency": {str(k): v for k, v in verdict.latency.items()}} if verdict else {})}
    if passed or override:
        if champion is not None:
            registry.set_alias(root, registry.PREVIOUS, champion)
            registry.tag(root, champion, "replaced_by", f"v{challenger.version}")
        registry.set_alias(root, registry.CHAMPION, challenger)
        if override and not passed:
            registry.tag(root, challenger, "override_by", by)
            registry.tag(root, challenger, "override_reason", reason)
            lines.append(f"promoted by override: {by}: {reason}")
        ledger.append("promote", {**detail, **({"override_by": by, "override_reason": reason} if override and not passed
                                                else {})}, sha)
    else:
        ledger.append("gate_refused", detail, sha)
        _write_refusal(root, challenger, champion, lines, verdict)
    from .modelcard import write_card
    write_card(root, registry.version_of(root, sha))  # after the decision, so the card carries it (and any override)
    return Decision(passed or override, int(challenger.version), None if champion is None else int(champion.version),
                    lines, verdict)


def decision_lines(root: Path, sha: str | None = None) -> list[str]:
    """Each gate decision in the ledger (of one model, by its sha256, or of all), in order, as one line: date,
    version, promoted or refused, the champion before, the reasons and any override. The model card and the
    experience report both print these."""
    lines = []
    for e in Ledger(root).entries():
        if e["event"] not in ("promote", "gate_refused") or (sha is not None and e.get("model_sha256") != sha):
            continue
        d = e["detail"]
        what = "promoted to champion" if e["event"] == "promote" else "refused by the gate"
        before = f"champion before: version {d['champion_before']}" if d.get("champion_before") else "first champion"
        lines.append(f"{e['time'][:10]}: version {d.get('version')} {what} ({before})"
                     + "".join(f"; {w}" for w in d.get("why", []))
                     + (f"; override by {d['override_by']}: {d['override_reason']}" if d.get("override_by") else ""))
    return lines


def _write_refusal(root: Path, challenger, champion, lines: list[str], verdict) -> Path:
    "The gate's refusal, with its numbers, as JSON and a PDF under reports/gate/."
    from .iorw import atomic_write_text
    folder = root / GATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"challenger": int(challenger.version), "champion": None if champion is None else int(champion.version),
              "why": lines, **({"numbers": verdict.numbers, "latency": {str(k): v for k, v in verdict.latency.items()}}
                               if verdict else {})}
    out = folder / f"v{challenger.version}_refused.json"
    atomic_write_text(out, json.dumps(record, indent=2, default=float) + "\n")
    _render_refusal(root, folder / f"v{challenger.version}_refused.pdf", record)
    return out


def _render_refusal(root: Path, pdf: Path, record: dict) -> None:
    "A one-page PDF: which test failed, with its numbers (plain LaTeX through latexmk, like every deliverable)."
    import shutil
    import subprocess
    import tempfile

    from .report import PREAMBLE, tex
    body = [PREAMBLE, r"\title{Champion/challenger gate: refused}", r"\date{}", r"\begin{document}\maketitle",
            tex(f"Challenger: version {record['challenger']}; champion: version {record['champion']}."),
            r"\begin{itemize}"] + [r"\item " + tex(line) for line in record["why"]] + [r"\end{itemize}"]
    body.append(r"\end{document}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gate.tex").write_text("\n".join(body), encoding="utf-8")
        done = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "gate.tex"], cwd=tmp,
                              capture_output=True, text=True)
        if done.returncode == 0:
            shutil.copyfile(Path(tmp) / "gate.pdf", pdf)
