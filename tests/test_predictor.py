"""The predictor behind `stagebook predict` and `serve`: registered weights verified, versions on every answer, a
broken image answered with its reason, a prediction log that survives crashes and rotates, and a promotion served
without a restart."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from stagebook import StagebookError, registry
from stagebook.predictor import Predictor, append_log, read_log
from stagebook.zoo import build


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build("small_cnn", 3, 3, 4)
    meta = {"arch": "small_cnn", "classes": ["a", "b", "c"], "image_size": 16, "width": 4, "channels": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def _png(colour=(200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 24), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def registered(project: Path) -> Path:
    v1 = registry.register(project, _checkpoint(project / "m1.pth", 1), {"code_commit": "c1" * 20, "data_version": "d1"})
    registry.set_alias(project, registry.CHAMPION, v1)
    return project


def test_answers_carry_label_probabilities_and_versions(registered: Path):
    answers = Predictor(registered).predict_bytes([("red.png", _png())])
    a = answers[0]
    assert a["label"] in ("a", "b", "c") and abs(sum(a["probabilities"].values()) - 1) < 1e-5
    assert (a["model_version"], a["code_commit"], a["data_version"]) == (1, "c1" * 20, "d1")
    assert len(a["model_sha256"]) == 64 and len(a["input_sha256"]) == 64
    logged = read_log(registered / "logs/predictions.jsonl")
    assert logged[-1]["input_sha256"] == a["input_sha256"] and logged[-1]["model_version"] == 1


def test_a_broken_image_is_an_answer_with_its_reason_and_the_rest_still_predict(registered: Path):
    answers = Predictor(registered).predict_bytes([("bad.png", b"not an image"), ("ok.png", _png())])
    assert "not a usable image" in answers[0]["error"] and "label" not in answers[0]
    assert answers[1]["label"] in ("a", "b", "c")


def test_tampered_weights_are_refused_before_loading(registered: Path):
    predictor = Predictor(registered)
    path = registry.weights(registered, registry.by_alias(registered, registry.CHAMPION))
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    artifact = Path(registry.by_alias(registered, registry.CHAMPION).source.replace("file://", ""))
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"0123456789")  # the store itself altered
    with pytest.raises(StagebookError, match="its sha256 is not the one registered"):
        predictor.current()


def test_a_promotion_is_served_without_a_restart(registered: Path):
    predictor = Predictor(registered, refresh=0.0)
    assert predictor.predict_bytes([("x.png", _png())])[0]["model_version"] == 1
    v2 = registry.register(registered, _checkpoint(registered / "m2.pth", 2), {"code_commit": "c2" * 20})
    registry.set_alias(registered, registry.CHAMPION, v2)
    assert predictor.predict_bytes([("x.png", _png())])[0]["model_version"] == 2
    assert Predictor(registered, version=1).predict_bytes([("x.png", _png())])[0]["model_version"] == 1


def test_http_answers_with_the_version_header_and_422_for_a_broken_image(registered: Path):
    from fastapi.testclient import TestClient

    from stagebook.serve import create_app
    client = TestClient(create_app(Predictor(registered)))
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == 1 and health.headers["X-Model-Version"] == "1"
    ok = client.post("/predict", files=[("files", ("r.png", _png(), "image/png"))])
    assert ok.status_code == 200 and ok.headers["X-Model-Version"] == "1"
    assert ok.json()["predictions"][0]["code_commit"] == "c1" * 20
    bad = client.post("/predict", files=[("files", ("b.png", b"garbage", "image/png"))])
    assert bad.status_code == 422 and "not a usable image" in bad.json()["predictions"][0]["error"]
    assert client.post("/predict", files=[("files", ("r.png", _png(), "image/png"))]).status_code == 200  # still serving


def test_the_log_skips_a_torn_line_and_rotates_by_size(tmp_path: Path, monkeypatch):
    log = tmp_path / "p.jsonl"
    append_log(log, [{"n": 1}])
    with open(log, "a") as fh:
        fh.write('{"n": 2, "torn')  # a crash mid-write
    append_log(log, [{"n": 3}])
    assert [r["n"] for r in read_log(log)] == [1, 3]
    monkeypatch.setattr("stagebook.predictor.LOG_MAX_BYTES", 10)
    append_log(log, [{"n": 4}])
    assert (tmp_path / "p.jsonl.1").is_file() and [r["n"] for r in read_log(log)] == [4]
