"""The flywheel: confident logged predictions become a review batch; confirmed ones join the data source, and the
split keeps them out of the sealed test."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import mixed_images
from stagebook import StagebookError, registry
from stagebook.harvest import ACCEPTED, QUEUE, accept, harvest
from stagebook.manifest import build_manifest
from stagebook.predictor import Predictor, read_log
from stagebook.split import HARVEST_NEAR_TEST, split_assignments
from stagebook.zoo import build

PROPORTIONS = {"train": 0.7, "valid": 0.15, "test": 0.15}


@pytest.fixture
def served(project: Path, tmp_path: Path) -> Path:
    "A folder source of 3 classes, a champion, and 24 new images predicted with --keep-inputs (then deleted)."
    mixed_images(project / "images", classes=3, per_class=6, seed=1)
    (project / "params/data.yaml").write_text("source: images\nroot: images\nimage_size: 16\nchannels: 3\n")
    torch.manual_seed(0)
    classes = sorted(p.name for p in (project / "images").iterdir())
    meta = {"arch": "small_cnn", "classes": classes, "image_size": 16, "width": 4, "channels": 3}
    torch.save({"state_dict": build("small_cnn", 3, 3, 4).state_dict(), "meta": meta}, project / "m.pth")
    registry.set_alias(project, registry.CHAMPION, registry.register(project, project / "m.pth", {"code_commit": "c" * 40}))
    incoming = mixed_images(tmp_path / "incoming", classes=3, per_class=8, seed=7)
    Predictor(project, keep_inputs=True).predict_paths([incoming])
    shutil.rmtree(incoming)  # only the kept copies remain
    return project


def test_confident_predictions_are_queued_once_with_their_images(served: Path):
    logged = read_log(served / "logs/predictions.jsonl")
    threshold = float(np.median([r["confidence"] for r in logged]))
    done = harvest(served, threshold)
    above = {r["input_sha256"] for r in logged if r["confidence"] >= threshold}
    queue = pd.read_csv(served / QUEUE, dtype=str, keep_default_na=False)
    assert done.queued == len(queue) == len(above) and set(queue.sha256) == above
    assert done.below == len(logged) - len([r for r in logged if r["confidence"] >= threshold])
    assert (queue.label == queue.predicted).all() and (queue.reviewed_label == "").all()
    assert all((served / p).is_file() for p in queue.path)
    assert ",".join(queue.columns) == "path,sha256,label,predicted,confidence,loss,reviewed_label,reviewer,note"  # 05's
    again = harvest(served, threshold)  # nothing twice
    assert again.queued == 0 and again.known == done.queued


def test_accepted_rows_join_the_class_folders_and_never_the_test_split(served: Path):
    harvest(served, 0.01)
    queue = pd.read_csv(served / QUEUE, dtype=str, keep_default_na=False)
    queue.loc[:9, "reviewed_label"] = queue.loc[:9, "label"]
    queue.loc[0, "reviewed_label"] = sorted(set(queue.label) ^ {queue.label[0]} or {queue.label[0]})[0]  # a correction
    queue.loc[:9, "reviewer"] = "Ada"
    queue.to_csv(served / QUEUE, index=False)
    count, source = accept(served)
    assert count == 10 and source == "images"
    added = sorted((served / "images").glob("*/harvest-*"))
    assert len(added) == 10 and (served / "images" / queue.reviewed_label[0] / added[0].name).parent.is_dir()
    assert len(pd.read_csv(served / QUEUE)) == len(queue) - 10 and len(pd.read_csv(served / ACCEPTED)) == 10
    items = build_manifest("images", served, "images").assign(status="ok", sha256=lambda t: t.path)
    assert (items.source == "harvest").sum() == 10
    for seed in range(5):
        splits = split_assignments(items, PROPORTIONS, seed)
        assert not ((splits.source == "harvest") & (splits.split == "test")).any()
        assert (splits.split == "test").sum() > 0


def test_a_harvested_near_copy_of_a_test_item_is_excluded():
    items = pd.DataFrame({"path": [f"a/{i}.png" for i in range(40)], "label": "a", "status": "ok", "source": "",
                          "cluster": "", "sha256": [str(i) for i in range(40)]})
    first = split_assignments(items, PROPORTIONS, 0)
    test_item = first[first.split == "test"].path.iloc[0]
    copy = pd.DataFrame({"path": ["a/harvest-x.png", "a/harvest-y.png"], "label": "a", "status": "ok",
                         "source": "harvest", "cluster": ["c1", ""], "sha256": ["x", "y"]})
    grown = pd.concat([items.assign(cluster=np.where(items.path == test_item, "c1", "")), copy], ignore_index=True)
    second = split_assignments(grown, PROPORTIONS, 0, first).set_index("path")
    assert second.loc["a/harvest-x.png", "status"] == HARVEST_NEAR_TEST  # its unit is sealed test: out of the data
    assert second.loc["a/harvest-y.png", "split"] in ("train", "valid") and second.loc["a/harvest-y.png", "status"] == "ok"
    kept = second.drop(index=["a/harvest-x.png", "a/harvest-y.png"]).split
    assert kept.sort_index().astype(str).to_dict() == first.set_index("path").split.astype(str).to_dict()  # none moved


def test_a_manifest_source_gets_rows_and_pipeline_outputs_are_refused(served: Path):
    images = served / "images"
    rows = [{"path": p.relative_to(images).as_posix(), "label": p.parent.name} for p in sorted(images.glob("*/*.png"))]
    pd.DataFrame(rows).to_csv(images / "manifest.csv", index=False)
    (served / "params/data.yaml").write_text("source: images/manifest.csv\nimage_size: 16\nchannels: 3\n")
    harvest(served, 0.01)
    queue = pd.read_csv(served / QUEUE, dtype=str, keep_default_na=False)
    queue.loc[:2, "reviewed_label"] = queue.loc[:2, "label"]
    queue.to_csv(served / QUEUE, index=False)
    (served / "dvc.yaml").write_text("stages:\n  make:\n    cmd: x\n    outs:\n      - images\n")
    with pytest.raises(StagebookError, match="is written by the DVC stage make"):
        accept(served)
    (served / "dvc.yaml").unlink()
    assert accept(served)[0] == 3
    manifest = build_manifest("images/manifest.csv", served, "images")
    assert (manifest.source == "harvest").sum() == 3 and len(manifest) == len(rows) + 3


def test_without_kept_images_nothing_is_queued_and_it_says_why(served: Path):
    shutil.rmtree(served / "logs/inputs")
    done = harvest(served, 0.01)
    assert done.queued == 0 and done.missing == len(read_log(served / "logs/predictions.jsonl"))
    with pytest.raises(StagebookError, match="no reviewed row yet"):
        accept(served)
