"""The sealed test set: only the sealed stage reads it, every read is logged in a hash-chained ledger, any change to a
sealed item stops the read with its name, and a model already evaluated gets its recorded result back."""
import json
from pathlib import Path

import pandas as pd
import pytest

from stagebook import StagebookError
from stagebook.audit import audit
from stagebook.data import read_split
from stagebook.embedded import write_digits
from stagebook.manifest import build_manifest
from stagebook.seal import Ledger, SealedTestSet, ledger_path, read_seal, seal_path, write_seal
from stagebook.split import split_assignments

PROPS = {"train": 0.6, "valid": 0.2, "test": 0.2}
SEALED = "06_sealed_test"


@pytest.fixture
def sealed(project: Path, monkeypatch) -> Path:
    "A project whose 60 digits are split and sealed; the environment says we are in stage 06's run."
    write_digits(project / "data" / "raw", per_class=6)
    result = audit(build_manifest("data/raw", project), project, 0.01, workers=1, progress=False)
    splits = split_assignments(result.items, PROPS, 0)
    splits.to_csv(project / "data" / "splits.csv", index=False)
    write_seal(project, splits)
    monkeypatch.setenv("STAGEBOOK_ROOT", str(project))
    monkeypatch.setenv("STAGEBOOK_STAGE", "06_sealed_test")
    return project


def _test_paths(root: Path) -> list[str]:
    return sorted(read_seal(root)["items"])


def test_the_sealed_stage_reads_the_test_split_and_the_read_is_logged(sealed: Path):
    rows = SealedTestSet(sealed, reader=SEALED).read("m" * 64)
    assert len(rows) == read_seal(sealed)["count"] > 0 and (rows.split == "test").all()
    events = [e["event"] for e in Ledger(sealed).entries()]
    assert events == ["seal", "read"] and Ledger(sealed).entries()[-1]["model_sha256"] == "m" * 64


@pytest.mark.parametrize("stage", ["04_tuning", ""])
def test_any_other_stage_or_a_person_is_refused_with_the_reason(sealed: Path, monkeypatch, stage):
    monkeypatch.setenv("STAGEBOOK_STAGE", stage)
    with pytest.raises(StagebookError, match="the test split is sealed: only stage 06_sealed_test, run by `stagebook run`"):
        read_split("test")
    entries = Ledger(sealed).entries()
    assert [e["event"] for e in entries] == ["seal", "refused"], "a refused read is logged, and is no read"
    assert entries[-1]["detail"]["reader"] == (stage or "interactive")


def test_one_changed_byte_stops_the_read_naming_the_file(sealed: Path):
    victim = sealed / _test_paths(sealed)[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(StagebookError, match=rf"no longer matches its seal \(changed 1: {_test_paths(sealed)[0]}\)"):
        SealedTestSet(sealed, reader=SEALED).read("m" * 64)


def test_vanished_and_added_items_are_listed(sealed: Path):
    gone = _test_paths(sealed)[1]
    (sealed / gone).unlink()
    splits = pd.read_csv(sealed / "data" / "splits.csv", dtype=str, keep_default_na=False)
    splits.loc[splits.split == "train", "split"] = splits.loc[splits.split == "train", "split"].where(
        splits.index[splits.split == "train"] != splits.index[splits.split == "train"][0], "test")
    splits.to_csv(sealed / "data" / "splits.csv", index=False)
    with pytest.raises(StagebookError, match=rf"vanished 1: {gone}; added 1: "):
        SealedTestSet(sealed, reader=SEALED).read("m" * 64)


def test_a_relabelled_test_item_counts_as_changed(sealed: Path):
    splits = pd.read_csv(sealed / "data" / "splits.csv", dtype=str, keep_default_na=False)
    first = _test_paths(sealed)[0]
    splits.loc[splits.path == first, "label"] = "7" if splits.loc[splits.path == first, "label"].iloc[0] != "7" else "8"
    splits.to_csv(sealed / "data" / "splits.csv", index=False)
    with pytest.raises(StagebookError, match=f"changed 1: {first}"):
        SealedTestSet(sealed, reader=SEALED).read("m" * 64)


def test_a_hand_edited_seal_is_detected(sealed: Path):
    seal = json.loads(seal_path(sealed).read_text())
    seal["items"].pop(sorted(seal["items"])[0])
    seal_path(sealed).write_text(json.dumps(seal))
    with pytest.raises(StagebookError, match="does not match its own list_hash: the seal was edited by hand"):
        SealedTestSet(sealed, reader=SEALED).read("m" * 64)


def test_the_same_model_reuses_its_recorded_result_instead_of_reading_again(sealed: Path):
    sealed_set = SealedTestSet(sealed, reader=SEALED)
    assert sealed_set.recorded_predictions("a" * 64) is None
    rows = sealed_set.read("a" * 64)
    predictions = pd.DataFrame({"path": rows.path, "label": rows.label, "predicted": rows.label})
    sealed_set.record_predictions("a" * 64, predictions, {"accuracy": 1.0})
    again = sealed_set.recorded_predictions("a" * 64)
    pd.testing.assert_frame_equal(again, predictions.astype(str).reset_index(drop=True))
    assert sealed_set.recorded_predictions("b" * 64) is None, "another model must read for itself"
    assert [e["event"] for e in Ledger(sealed).entries()] == ["seal", "read", "result", "reuse"]


def test_ledger_chain_detects_an_edited_or_removed_line(sealed: Path):
    ledger = Ledger(sealed)
    for n in range(3):
        ledger.append("read", {"n": n}, "m" * 64)
    assert ledger.verify() == (True, f"{ledger_path(sealed)}: chain intact, 4 entries")
    lines = ledger_path(sealed).read_text().splitlines()
    edited = json.loads(lines[2])
    edited["detail"]["n"] = 99
    ledger_path(sealed).write_text("\n".join([*lines[:2], json.dumps(edited), *lines[3:]]) + "\n")
    ok, message = ledger.verify()
    assert not ok and "chain broken at line 3" in message
    ledger_path(sealed).write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    ok, message = ledger.verify()
    assert not ok and "chain broken at line 2" in message


def test_a_changed_item_refusal_is_logged_too(sealed: Path):
    victim = sealed / _test_paths(sealed)[0]
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(StagebookError):
        SealedTestSet(sealed, reader=SEALED).read("m" * 64)
    last = Ledger(sealed).entries()[-1]
    assert last["event"] == "refused" and last["detail"]["changed"] == 1 and last["stage"] == SEALED


def test_the_read_budget_counts_distinct_models_per_seal_and_refuses_the_next(sealed: Path):
    sealed_set = SealedTestSet(sealed, reader=SEALED, budget=2)
    for model in ("a", "b"):
        sealed_set.read(model * 64)
    sealed_set.read("a" * 64)  # a model already counted reads within the budget
    assert sealed_set.standing("b" * 64) == (2, 2) and sealed_set.standing("c" * 64) == (0, 2)
    with pytest.raises(StagebookError, match=r"the read budget of this seal is spent: 2 models were evaluated"):
        sealed_set.read("c" * 64)
    assert [e["event"] for e in Ledger(sealed).entries()][-1] == "refused"
    splits = pd.read_csv(sealed / "data" / "splits.csv", dtype=str, keep_default_na=False)
    write_seal(sealed, splits, reason="same items again")  # the same list: the same seal, still spent
    with pytest.raises(StagebookError, match="budget of this seal is spent"):
        SealedTestSet(sealed, reader=SEALED, budget=2).read("c" * 64)
    splits.loc[splits.index[splits.split == "train"][0], "split"] = "test"  # new test data, sealed on purpose
    splits.to_csv(sealed / "data" / "splits.csv", index=False)
    write_seal(sealed, splits, reason="one more test item")
    assert len(SealedTestSet(sealed, reader=SEALED, budget=2).read("c" * 64)) == read_seal(sealed)["count"]


@pytest.mark.parametrize("value", ["abc", 0, 2.5, True])
def test_a_bad_read_budget_in_the_project_page_is_named(sealed: Path, value):
    from stagebook.seal import reads_per_seal
    (sealed / "project_page.md").write_text(f"---\nproject: x\ntest_reads_per_seal: {value}\n---\n")
    with pytest.raises(StagebookError, match=rf"project_page.md: 'test_reads_per_seal' must be a whole number of at least 1, got {value!r}"):
        reads_per_seal(sealed)


def test_reset_before_any_read_clears_split_seal_and_ledger(sealed: Path):
    from stagebook.seal import reset_split
    removed = reset_split(sealed)
    assert set(removed) >= {"data/splits.csv", "data/test.seal.json", "data/test_ledger.jsonl"}
    assert not (sealed / "data" / "splits.csv").exists() and read_seal(sealed) is None
    assert reset_split(sealed) == []  # nothing left: still fine


def test_reset_after_a_read_is_refused_and_resplit_keeps_old_test_items_out_of_training(sealed: Path):
    from stagebook.seal import reset_split, resplit
    SealedTestSet(sealed, reader=SEALED).read("m" * 64)
    before = (sealed / "data" / "splits.csv").read_bytes()
    with pytest.raises(StagebookError) as refused:
        reset_split(sealed)
    assert "results cannot be unseen" in str(refused.value) and "--resplit" in str(refused.value)
    assert (sealed / "data" / "splits.csv").read_bytes() == before and read_seal(sealed) is not None
    old = pd.read_csv(sealed / "data" / "splits.csv", dtype=str, keep_default_na=False)
    old_test = set(old.path[old.split == "test"])
    assert resplit(sealed, "Ada", "new labelling guide") == len(old_test)
    assert Ledger(sealed).entries()[-1]["event"] == "resplit" and Ledger(sealed).verify()[0]
    result = audit(build_manifest("data/raw", sealed), sealed, 0.01, workers=1, progress=False)
    kept = pd.read_csv(sealed / "data" / "splits.csv", dtype=str, keep_default_na=False)
    again = split_assignments(result.items, PROPS, 7, previous=kept)  # a new seed places the rest afresh
    assert old_test <= set(again.path[again.split == "test"])  # once test, always test
    with pytest.raises(StagebookError, match="needs --by NAME and --reason TEXT"):
        resplit(sealed, "", "")
