"""The sealed test set: its identity committed in a small seal file, every read logged in a hash-chained ledger.

- `write_seal` records the sha256 and label of every usable test item (by its path relative to the data root), and
  one hash over the whole list.
- `SealedTestSet.read` serves the test items only inside the sealed-test stage's run, after re-hashing every file
  against the seal; any changed, vanished or added item stops it with the list of names.
- The ledger (`data/test_ledger.jsonl`) appends one line per seal, read, result and reuse; each line carries the
  hash of the line before, so an edited or deleted line breaks the chain and `stagebook ledger` says where.
- A model already evaluated on this seal gets its recorded predictions back instead of a second read.
- Reads are counted per seal: at most `test_reads_per_seal` distinct models (the project page; default 5), after
  which a read is refused until new test data is sealed. Every refusal is logged too.

A data module: it never asks the notebook runtime who is reading; the caller says so (`reader`, `commit`).
"""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import StagebookError
from .iorw import atomic_write_text
from .dataconfig import data_root
from .lineage import file_sha256
from .project import data_record, settings
from .split import load_splits

GENESIS = "0" * 64
DEFAULT_READS_PER_SEAL = 5


def seal_path(root: Path) -> Path:
    return data_record(root, "seal")


def ledger_path(root: Path) -> Path:
    return data_record(root, "ledger")


def results_dir(root: Path) -> Path:
    return data_record(root, "test_results")


def _list_hash(items: dict[str, dict]) -> str:
    lines = "".join(f"{path}\t{v['sha256']}\t{v['label']}\n" for path, v in sorted(items.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def test_rows(splits: pd.DataFrame) -> pd.DataFrame:
    return splits[(splits.split == "test") & (splits.status == "ok")]


def write_seal(root: Path, splits: pd.DataFrame, reason: str = "sealed", stage: str = "", commit: str = "") -> dict:
    "Seal the usable test rows of `splits`: per-item content hash and label, and one hash over the list."
    rows = test_rows(splits)
    items = {p: {"sha256": s, "label": str(lbl)} for p, s, lbl in zip(rows.path, rows.sha256, rows.label)}
    seal = {"sealed_at": _now(), "count": len(items), "list_hash": _list_hash(items), "items": items}
    atomic_write_text(seal_path(root), json.dumps(seal, indent=1, sort_keys=True) + "\n")
    Ledger(root, stage, commit).append("seal", detail={"reason": reason, "count": len(items), "list_hash": seal["list_hash"]})
    return seal


def read_seal(root: Path) -> dict | None:
    path = seal_path(root)
    if not path.is_file():
        return None
    try:
        seal = json.loads(path.read_text())
        if _list_hash(seal["items"]) != seal["list_hash"]:
            raise StagebookError(f"{path}: the item list does not match its own list_hash: the seal was edited by hand;"
                                 " restore it from git (git checkout -- " f"{path.relative_to(root)}).")
        return seal
    except (json.JSONDecodeError, KeyError, TypeError):
        raise StagebookError(f"{path}: not a readable seal; restore it from git or re-seal with `stagebook seal`.") from None


def differences(root: Path, seal: dict, splits: pd.DataFrame) -> dict[str, list[str]]:
    "Sealed items whose bytes or label changed, that vanished, or test items the seal does not hold."
    rows = test_rows(splits)
    current = dict(zip(rows.path, rows.label.astype(str)))
    changed, vanished = [], []
    base = data_root(root)  # sealed paths are relative to the data root: moving the data folder breaks nothing
    for path, expected in sorted(seal["items"].items()):
        file = base / path
        if not file.is_file():
            vanished.append(path)
        elif file_sha256(file) != expected["sha256"]:
            changed.append(path)
        elif path not in current:  # still on disk, but no longer a usable test item
            vanished.append(path)
        elif current[path] != expected["label"]:
            changed.append(path)
    added = sorted(set(current) - set(seal["items"]))
    return {"changed": changed, "vanished": vanished, "added": added}


def rebase_paths(root: Path, prefix: str, stage: str = "", commit: str = "") -> int:
    """Rewrite a split manifest and seal that name items by project-relative paths under `prefix` (the data root, as
    written before paths were relative to it) to data-root-relative ones; the seal's new list hash is logged as a
    `rebase` of the old one, so the read budget and past reads carry over. Returns the rows rewritten (0: nothing to do)."""
    head = prefix.rstrip("/") + "/"
    if head in ("./", "/"):
        return 0
    splits_file = root / settings(root)["splits_file"]
    if not splits_file.is_file():
        return 0
    table = pd.read_csv(splits_file, dtype=str, keep_default_na=False)
    under = table.path.str.startswith(head)
    if not under.any():
        return 0
    table.loc[under, "path"] = table.path[under].str[len(head):]
    atomic_write_text(splits_file, table.to_csv(index=False))
    seal = read_seal(root)
    if seal is not None and any(p.startswith(head) for p in seal["items"]):
        items = {(p[len(head):] if p.startswith(head) else p): v for p, v in seal["items"].items()}
        new = {**seal, "items": items, "list_hash": _list_hash(items)}
        atomic_write_text(seal_path(root), json.dumps(new, indent=1, sort_keys=True) + "\n")
        Ledger(root, stage, commit).append("rebase", {"from_list_hash": seal["list_hash"], "list_hash": new["list_hash"],
                                                      "stripped": head, "count": len(items)})
    return int(under.sum())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    "Append-only, hash-chained log of everything done with the test set, by whom (`stage`) and at which commit."

    def __init__(self, root: Path, stage: str = "", commit: str = ""):
        self.path = ledger_path(root)
        self.stage, self.commit = stage, commit

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, event: str, detail: dict, model_sha256: str = "") -> dict:
        entries = self.entries()
        entry = {"seq": len(entries) + 1, "time": _now(), "event": event, "stage": self.stage,
                 "commit": self.commit, "model_sha256": model_sha256, "detail": detail,
                 "prev": entries[-1]["hash"] if entries else GENESIS}
        entry["hash"] = _entry_hash(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def verify(self) -> tuple[bool, str]:
        "(True, summary) when every line's hash and link hold; else (False, where it breaks)."
        prev = GENESIS
        try:
            entries = self.entries()
        except json.JSONDecodeError as err:
            return False, f"{self.path}: line {err.lineno if hasattr(err, 'lineno') else '?'} is not JSON"
        for number, entry in enumerate(entries, start=1):
            if entry.get("prev") != prev or entry.get("hash") != _entry_hash(entry) or entry.get("seq") != number:
                return False, f"{self.path}: chain broken at line {number} ({entry.get('event', '?')}); it was edited or a line was removed"
            prev = entry["hash"]
        return True, f"{self.path}: chain intact, {len(entries)} entries"


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def reads_per_seal(root: Path) -> int:
    "The project page's `test_reads_per_seal` (distinct models evaluated per seal), default 5."
    from .project_page import front_matter
    page = root / "project_page.md"
    value = front_matter(page).get("test_reads_per_seal", DEFAULT_READS_PER_SEAL) if page.is_file() else DEFAULT_READS_PER_SEAL
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StagebookError(f"{page}: 'test_reads_per_seal' must be a whole number of at least 1, got {value!r}.")
    return value


def same_seal(entries: list[dict], list_hash: str) -> set[str]:
    "The list hashes that name this seal: its own, and those it was rebased from (older item paths)."
    return {list_hash} | {e["detail"].get("from_list_hash") for e in entries
                          if e.get("event") == "rebase" and e.get("detail", {}).get("list_hash") == list_hash}


def latest_result(entries: list[dict], model_sha256: str, list_hash: str) -> dict | None:
    "The ledger's last `result` entry of this model on this seal, or None."
    hashes = same_seal(entries, list_hash)
    return next((e for e in reversed(entries) if e.get("event") == "result" and e.get("model_sha256") == model_sha256
                 and e.get("detail", {}).get("list_hash") in hashes), None)


def result_predictions(root: Path, entry: dict) -> pd.DataFrame | None:
    "A result entry's recorded predictions, or None when the file is gone or not the bytes the ledger recorded."
    file = root / entry["detail"]["predictions"]
    if not file.is_file() or file_sha256(file) != entry["detail"]["predictions_sha256"]:
        return None
    return pd.read_csv(file, dtype=str, keep_default_na=False)


class SealedTestSet:
    """The test split as the sealed stage may use it: verified against the seal, read at most once per model and by
    at most `budget` models per seal. `reader` is the stage asking (empty for a person at a notebook)."""

    def __init__(self, root: Path, reader: str = "", commit: str = "", budget: int | None = None):
        self.root = Path(root).resolve()
        self.reader = reader
        self.ledger = Ledger(self.root, reader, commit)
        self._budget = budget
        self._verified: dict | None = None  # hashing every test file once per run is enough

    @property
    def budget(self) -> int:
        "Read from the project page only when a read is counted, so a refusal never depends on the page."
        if self._budget is None:
            self._budget = reads_per_seal(self.root)
        return self._budget

    def refuse(self, why: str, model_sha256: str = "", **detail) -> None:
        "Log a refused attempt in the ledger, then stop with `why`."
        self.ledger.append("refused", {"why": why, "reader": self.reader or "interactive", **detail}, model_sha256)
        raise StagebookError(why)

    def _guard(self, model_sha256: str = "") -> None:
        sealed_stage = settings(self.root)["sealed_test_stage"]
        if self.reader != sealed_stage:
            self.refuse(f"the test split is sealed: only stage {sealed_stage}, run by `stagebook run`, may read it,"
                        " once per submitted model, and every read is logged; measure progress on 'valid'.",
                        model_sha256)

    def verify(self, splits: pd.DataFrame | None = None) -> dict:
        "The seal, after checking every sealed item against its file; raises (logged) listing what changed."
        if self._verified is not None:
            return self._verified
        seal = read_seal(self.root)
        if seal is None:
            raise StagebookError(f"{seal_path(self.root)}: no seal; run stage 01 (which seals a new split) or `stagebook seal`.")
        splits = load_splits(self.root, usable_only=False) if splits is None else splits
        diff = differences(self.root, seal, splits)
        if any(diff.values()):
            parts = [f"{kind} {len(paths)}: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}"
                     for kind, paths in diff.items() if paths]
            self.refuse(f"{seal_path(self.root)}: the test set no longer matches its seal ({'; '.join(parts)});"
                        " restore the data, or accept the new test set with `stagebook seal` (logged).",
                        **{kind: len(paths) for kind, paths in diff.items()})
        self._verified = seal
        return seal

    def models_read(self, list_hash: str) -> list[str]:
        "The distinct models that read the test items under this seal, in the order they first did."
        seen: list[str] = []
        entries = self.ledger.entries()
        same = same_seal(entries, list_hash)  # the seal under its older paths too
        for entry in entries:
            if entry.get("event") == "read" and entry.get("detail", {}).get("list_hash") in same \
                    and entry.get("model_sha256") not in seen:
                seen.append(entry["model_sha256"])
        return seen

    def standing(self, model_sha256: str) -> tuple[int, int]:
        "(k, n): this model is the k-th evaluated on the current seal, of at most n (k = 0: not evaluated yet)."
        read = self.models_read(self.verify()["list_hash"])
        return (read.index(model_sha256) + 1 if model_sha256 in read else 0), self.budget

    def read(self, model_sha256: str, splits: pd.DataFrame | None = None) -> pd.DataFrame:
        "The usable test items, for `model_sha256`; verified against the seal, within the budget, and logged."
        self._guard(model_sha256)
        splits = load_splits(self.root, usable_only=False) if splits is None else splits
        seal = self.verify(splits)
        read = self.models_read(seal["list_hash"])
        if model_sha256 not in read and len(read) >= self.budget:
            self.refuse(f"the read budget of this seal is spent: {len(read)} models were evaluated on seal"
                        f" {seal['list_hash'][:16]} (test_reads_per_seal: {self.budget} in project_page.md); seal new"
                        " test data (`stagebook seal`) before evaluating another model.", model_sha256,
                        list_hash=seal["list_hash"])
        rows = test_rows(splits).reset_index(drop=True)
        self.ledger.append("read", {"items": len(rows), "list_hash": seal["list_hash"]}, model_sha256)
        return rows

    def recorded_predictions(self, model_sha256: str) -> pd.DataFrame | None:
        "Predictions this model already made on this seal (checked against their recorded hash), or None."
        self._guard(model_sha256)
        seal = self.verify()
        entry = latest_result(self.ledger.entries(), model_sha256, seal["list_hash"])
        predictions = None if entry is None else result_predictions(self.root, entry)
        if predictions is not None:
            self.ledger.append("reuse", {"of_seq": entry["seq"], "list_hash": seal["list_hash"]}, model_sha256)
        return predictions

    def record_predictions(self, model_sha256: str, predictions: pd.DataFrame, metrics: dict) -> Path:
        "Keep this model's test predictions and log the result, so the same model never reads the test set again."
        self._guard(model_sha256)
        seal = read_seal(self.root)
        folder = results_dir(self.root)
        file = folder / f"{model_sha256[:16]}.csv"
        buffer = io.StringIO()
        predictions.to_csv(buffer, index=False)
        atomic_write_text(file, buffer.getvalue())
        self.ledger.append("result", {"list_hash": seal["list_hash"], "metrics": metrics,
                                      "predictions": file.relative_to(self.root).as_posix(),
                                      "predictions_sha256": file_sha256(file)}, model_sha256)
        return file


LOOKED = ("read", "result", "reuse")  # ledger events that mean someone has seen test results


def test_reads(root: Path) -> list[dict]:
    "Ledger entries in which the test split was read or its results used."
    return [e for e in Ledger(root).entries() if e.get("event") in LOOKED]


def reset_split(root: Path) -> list[str]:
    """Start the split over (`clear_split_records`) while nobody has read the test split: a seal nobody has looked
    behind is still blank. After a read it refuses: results cannot be unseen; `resplit` is the recorded way."""
    reads = test_reads(root)
    if reads:
        first = reads[0]
        count = sum(e["event"] == "read" for e in reads)
        raise StagebookError(
            f"stagebook split --reset: refused: the sealed test split was read {count} time(s) (first: ledger line"
            f" {first['seq']}, {first['time']}), and results cannot be unseen. A deliberate re-split is a new seal:"
            " `stagebook split --resplit --by NAME --reason TEXT` keeps every old test item in test (out of training),"
            " places the rest afresh at the next stage-01 run, and logs it in the ledger.")
    return clear_split_records(root)


def clear_split_records(root: Path) -> list[str]:
    """Remove the split manifest, its policy, the seal, the ledger and test results, and withdraw the submission (a
    model trained on the old split is no candidate for a new one). No questions asked: callers decide when."""
    import shutil

    from .submission import read_submission, write_placeholder

    removed = []
    if read_submission(root) is not None:
        write_placeholder(root)
        removed.append("the submission (back to the placeholder)")
    for path in [root / settings(root)["splits_file"], *(data_record(root, n) for n in
                                                         ("split_policy", "seal", "ledger", "test_results"))]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
        else:
            continue
        removed.append(path.relative_to(root).as_posix())
    return removed


def resplit(root: Path, by: str, reason: str) -> int:
    """Re-place every item except the old test items, which stay in test (so never in training): the split manifest
    keeps only test rows, the next stage-01 run places the rest, and `stagebook seal` then seals the new test set.
    Logged in the ledger with who and why. Returns the test items kept."""
    if not by.strip() or not reason.strip():
        raise StagebookError("stagebook split --resplit: needs --by NAME and --reason TEXT; both go in the ledger.")
    splits_file = root / settings(root)["splits_file"]
    if not splits_file.is_file():
        raise StagebookError(f"{splits_file}: no split yet; run stage 01 first (nothing to re-split).")
    table = pd.read_csv(splits_file, dtype=str, keep_default_na=False)
    kept = table[table.split == "test"]
    atomic_write_text(splits_file, kept.to_csv(index=False))
    policy = data_record(root, "split_policy")
    if policy.is_file():
        policy.unlink()  # the new placement may use new proportions or seed
    Ledger(root, "stagebook split", "").append("resplit", {"by": by, "reason": reason, "test_items_kept": len(kept),
                                                            "items_replaced": len(table) - len(kept)})
    return len(kept)
