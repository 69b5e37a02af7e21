"""Exports of a registered version: TorchScript and ONNX files whose probabilities match the eager model on the
valid split, recorded in the registry with their sha256, and served by the predictor."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import mixed_images
from stagebook import StagebookError, registry
from stagebook.export import PARITY_TOLERANCE, eager, export_version, exported_file, session, valid_pixels, write_export
from stagebook.predictor import Predictor, load_checkpoint
from stagebook.zoo import build


@pytest.fixture
def exportable(project: Path) -> Path:
    "A champion trained on nothing (random weights: parity does not need a good model) and a valid split of real files."
    images = mixed_images(project / "images", classes=3, per_class=8)
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    (project / "data").mkdir(exist_ok=True)
    pd.DataFrame({"path": files, "label": [f.split("/")[0] for f in files], "status": "ok",
                  "split": ["valid" if i % 2 else "train" for i in range(len(files))]}).to_csv(project / "data/splits.csv", index=False)
    (project / "params/data.yaml").write_text("source: images\nroot: images\nimage_size: 20\nchannels: 3\n")
    torch.manual_seed(3)
    classes = sorted({f.split("/")[0] for f in files})
    model = build("small_cnn", len(classes), 3, 6, 0.3)
    meta = {"arch": "small_cnn", "classes": classes, "image_size": 20, "width": 6, "channels": 3, "dropout": 0.3}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, project / "m.pth")
    registry.set_alias(project, registry.CHAMPION, registry.register(project, project / "m.pth", {"code_commit": "c" * 40}))
    return project


def test_both_exports_match_the_model_on_valid_and_are_recorded(exportable: Path):
    version, done = export_version(exportable)
    assert [e.runtime for e in done] == ["torchscript", "onnx"]
    assert all(e.items == 12 and e.max_abs_diff <= PARITY_TOLERANCE for e in done)
    tags = registry.by_alias(exportable, registry.CHAMPION).tags
    assert tags["onnx_sha256"] == done[1].sha256 and "over 12 valid items" in tags["torchscript_parity"]
    # parity measured independently of export_version, on the same valid items
    model, meta = load_checkpoint(registry.weights(exportable, version))
    pixels = valid_pixels(exportable, meta)
    for e in done:
        assert np.abs(session(e.runtime, e.path)(pixels) - eager(model)(pixels)).max() <= PARITY_TOLERANCE


def test_the_predictor_serves_the_onnx_file_with_the_same_answers(exportable: Path):
    export_version(exportable)
    out = io.BytesIO()
    Image.new("RGB", (33, 21), (30, 200, 90)).save(out, format="PNG")
    items = [("g.png", out.getvalue()), ("bad.png", b"nope")]
    by_torch = Predictor(exportable, log=False).predict_bytes(items)
    by_onnx = Predictor(exportable, log=False, runtime="onnx").predict_bytes(items)
    assert by_onnx[0]["runtime"] == "onnx" and by_onnx[0]["model_version"] == 1 and "error" in by_onnx[1]
    assert by_onnx[0]["label"] == by_torch[0]["label"]
    assert max(abs(by_onnx[0]["probabilities"][c] - p) for c, p in by_torch[0]["probabilities"].items()) <= 2e-6


def test_an_altered_export_is_fetched_again_and_a_missing_one_is_named(exportable: Path):
    version, done = export_version(exportable, runtimes=("onnx",))
    done[0].path.write_bytes(b"garbage")
    version = registry.by_alias(exportable, registry.CHAMPION)
    assert exported_file(exportable, version, "onnx").read_bytes() != b"garbage"  # the registry's copy, verified
    with pytest.raises(StagebookError, match="has no torchscript export; run `stagebook export --version 1`"):
        Predictor(exportable, runtime="torchscript").current()


def test_an_export_that_misses_parity_is_refused_and_not_recorded(exportable: Path, monkeypatch):
    import stagebook.export as export

    real = export.session
    monkeypatch.setattr(export, "session", lambda runtime, path, model=None: (lambda x: real(runtime, path, model)(x) + 1e-3))
    with pytest.raises(StagebookError, match=r"the onnx export of version 1 differs from the model by 1\.00e-03"):
        export_version(exportable, runtimes=("onnx",))
    assert "onnx_sha256" not in registry.by_alias(exportable, registry.CHAMPION).tags
    assert not (exportable / "models/export/v1.onnx").exists()


def test_exports_keep_a_free_batch_dimension(tmp_path: Path):
    model = build("small_cnn", 4, 1, 4)
    meta = {"image_size": 12, "channels": 1}
    for runtime, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
        run = session(runtime, write_export(model.eval(), meta, runtime, tmp_path / f"m{suffix}"))
        assert [run(np.zeros((n, 1, 12, 12), np.float32)).shape for n in (1, 64)] == [(1, 4), (64, 4)]
