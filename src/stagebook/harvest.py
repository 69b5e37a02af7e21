"""The flywheel: confident live predictions become a review batch, and confirmed ones become new data.

`stagebook harvest` reads the prediction log (`logs/predictions.jsonl` and its rotated files) and queues every
answer at or above `--min-confidence` whose image can still be had (kept by `predict/serve --keep-inputs`, or the
original file with the same sha256) and is not in the data yet. Each image is copied to `data/harvest/` and listed in
`data/harvest.csv` in the relabel queue's format, the model's label filled in, so people confirm (or correct)
instead of labelling from scratch.

`stagebook harvest --accept` adds the reviewed rows to the data source: into the class folder as
`harvest-<sha>.<ext>` for a folder source, or as rows with `source: harvest` for a CSV manifest. Stage 01 then audits
and splits them like any new item, except that harvested items never enter the test split
(`split.HARVEST_SOURCE`): the sealed test must not grade a model on its own answers.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .predictor import LOG, read_log

QUEUE = Path("data") / "harvest.csv"
IMAGES = Path("data") / "harvest"
ACCEPTED = Path("data") / "harvest_accepted.csv"
COLUMNS = ["path", "sha256", "label", "predicted", "confidence", "loss", "reviewed_label", "reviewer", "note"]


def _logged(root: Path) -> list[dict]:
    "Every logged answer, oldest rotated file first."
    log = root / LOG
    rotated = sorted(log.parent.glob(f"{log.name}.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [row for path in [*rotated, log] for row in read_log(path)]


def _bytes_of(root: Path, row: dict) -> bytes | None:
    "The predicted image's bytes: the kept copy, or the original file if it still has the same sha256."
    for candidate in (row.get("kept"), row.get("input")):
        if not candidate:
            continue
        path = Path(candidate) if Path(candidate).is_absolute() else root / candidate
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == row.get("input_sha256"):
                return data
    return None


def _known_sha256(root: Path) -> set[str]:
    from .project import settings

    splits = root / settings(root)["splits_file"]
    known = set(pd.read_csv(splits, dtype=str, keep_default_na=False).sha256) if splits.is_file() else set()
    for table in (root / QUEUE, root / ACCEPTED):
        if table.is_file():
            known |= set(pd.read_csv(table, dtype=str, keep_default_na=False).sha256)
    return known


@dataclass
class Harvested:
    queued: int
    below: int
    known: int
    missing: int


def harvest(root: Path, min_confidence: float = 0.95, limit: int | None = None) -> Harvested:
    "Queue confident logged predictions for review (see the module doc); returns what was queued and skipped."
    root = Path(root).resolve()
    if not 0 < min_confidence <= 1:
        raise StagebookError(f"--min-confidence {min_confidence}: expected a number in (0, 1], e.g. 0.95.")
    rows = [r for r in _logged(root) if "label" in r]
    if not rows:
        raise StagebookError(f"{root / LOG}: no logged predictions yet; `stagebook predict --keep-inputs` or"
                             " `stagebook serve --keep-inputs` log them with their images.")
    known, seen = _known_sha256(root), set()
    queued, counts = [], {"below": 0, "known": 0, "missing": 0}
    for row in sorted(rows, key=lambda r: -float(r.get("confidence", 0))):
        sha = row.get("input_sha256", "")
        if float(row.get("confidence", 0)) < min_confidence:
            counts["below"] += 1
            continue
        if sha in known or sha in seen:
            counts["known"] += 1
            continue
        data = _bytes_of(root, row)
        if data is None:
            counts["missing"] += 1
            continue
        if limit is not None and len(queued) >= limit:
            break
        seen.add(sha)
        ext = Path(row.get("kept") or row.get("input") or "x.png").suffix or ".png"
        target = IMAGES / f"{sha[:16]}{ext.lower()}"
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        (root / target).write_bytes(data)
        queued.append({"path": target.as_posix(), "sha256": sha, "label": row["label"], "predicted": row["label"],
                       "confidence": round(float(row["confidence"]), 6), "loss": "", "reviewed_label": "",
                       "reviewer": "", "note": f"model v{row.get('model_version', '?')} at {row.get('time', '?')}"})
    if queued:
        queue = root / QUEUE
        old = pd.read_csv(queue, dtype=str, keep_default_na=False) if queue.is_file() else pd.DataFrame(columns=COLUMNS)
        from .iorw import atomic_write_text
        atomic_write_text(queue, pd.concat([old, pd.DataFrame(queued)], ignore_index=True)[COLUMNS].to_csv(index=False))
    return Harvested(len(queued), counts["below"], counts["known"], counts["missing"])


def accept(root: Path) -> tuple[int, str]:
    """Add the reviewed rows of data/harvest.csv to the data source (see the module doc); they leave the queue for
    data/harvest_accepted.csv. Returns how many, and where they went."""
    from .dataconfig import load_data_config
    from .iorw import atomic_write_text
    from .manifest import HARVEST_PREFIX
    from .relabel import read_relabels

    root = Path(root).resolve()
    queue = root / QUEUE
    reviewed = read_relabels(queue)
    if reviewed.empty:
        raise StagebookError(f"{queue}: no reviewed row yet; fill in reviewed_label (the model's label, or the right"
                             " one) and reviewer for the rows you confirm, then run `stagebook harvest --accept`.")
    data = load_data_config(root)
    _refuse_pipeline_output(root, data.root_path)
    source = (root / data.source).resolve()
    classes = _classes(source)
    unknown = reviewed[~reviewed.reviewed_label.isin(classes)]
    if len(unknown):
        row = unknown.iloc[0]
        raise StagebookError(f"{queue}: {row.path} has reviewed_label {row.reviewed_label!r}, not a class of the data"
                             f" ({', '.join(sorted(classes)[:12])}); fix the spelling.")
    added = []
    for row in reviewed.itertuples():
        image = root / row.path
        ext = image.suffix.lower()
        if source.is_dir():
            target = source / row.reviewed_label / f"{HARVEST_PREFIX}{row.sha256[:16]}{ext}"
        else:
            target = data.root_path / "harvest" / f"{row.sha256[:16]}{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
        added.append({"path": target.relative_to(data.root_path).as_posix(), "label": row.reviewed_label,
                      "source": "harvest"})
    if source.is_file():  # a CSV manifest: append rows, adding a source column if it had none
        manifest = pd.read_csv(source, dtype=str, keep_default_na=False)
        rows = pd.DataFrame(added)
        rows["path"] = [_manifest_path(source, data.root_path, p) for p in rows.path]
        atomic_write_text(source, pd.concat([manifest, rows], ignore_index=True).fillna("").to_csv(index=False))
    done = pd.read_csv(queue, dtype=str, keep_default_na=False)
    taken = done.path.isin(reviewed.path)
    log = root / ACCEPTED
    old = pd.read_csv(log, dtype=str, keep_default_na=False) if log.is_file() else pd.DataFrame(columns=COLUMNS)
    atomic_write_text(log, pd.concat([old, done[taken]], ignore_index=True).to_csv(index=False))
    atomic_write_text(queue, done[~taken].to_csv(index=False))
    return len(added), str(source.relative_to(root) if source.is_relative_to(root) else source)


def _classes(source: Path) -> set[str]:
    if source.is_dir():
        return {p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return set(pd.read_csv(source, dtype=str, keep_default_na=False).label)


def _manifest_path(manifest: Path, data_root: Path, relative_to_root: str) -> str:
    "A path as the manifest writes its paths: relative to the manifest's folder."
    import os
    return Path(os.path.relpath(data_root / relative_to_root, manifest.parent)).as_posix()


def _refuse_pipeline_output(root: Path, data_root: Path) -> None:
    "The worked example's digits are written by a DVC stage, which would overwrite anything added to them."
    import yaml

    pipeline = root / "dvc.yaml"
    spec = yaml.safe_load(pipeline.read_text()) if pipeline.is_file() else {}
    for name, stage in ((spec or {}).get("stages") or {}).items():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            out = next(iter(out)) if isinstance(out, dict) else out
            if data_root == (root / str(out)).resolve() or data_root.is_relative_to((root / str(out)).resolve()):
                raise StagebookError(f"the data root {data_root.relative_to(root)} is written by the DVC stage {name},"
                                     " which would overwrite harvested items; point the project at data of your own"
                                     " (`stagebook data use PATH`) before accepting a harvest.")
