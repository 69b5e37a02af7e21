"""The model zoo: the small CNN is fastai's, made in torch alone."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from stagebook.zoo import small_cnn


def _fastai_small_cnn(n_classes: int, channels: int, width: int, dropout: float) -> nn.Sequential:
    "The small CNN as it was built with fastai's layers (the checkpoints saved before keep loading)."
    from fastai.layers import ConvLayer, Flatten

    return nn.Sequential(
        ConvLayer(channels, width, ks=3), ConvLayer(width, 2 * width, ks=3, stride=2),
        ConvLayer(2 * width, 4 * width, ks=3, stride=2), nn.AdaptiveAvgPool2d(1), Flatten(),
        nn.Dropout(dropout), nn.Linear(4 * width, n_classes))


@pytest.mark.parametrize("seed, classes, channels, width", [(0, 10, 1, 16), (1, 3, 3, 8), (7, 60, 1, 32)])
def test_same_seed_same_weights_same_outputs_as_fastai(seed, classes, channels, width):
    torch.manual_seed(seed)
    ours = small_cnn(classes, channels, width, 0.1)
    torch.manual_seed(seed)
    theirs = _fastai_small_cnn(classes, channels, width, 0.1)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(5, channels, 12, 12)
    for train in (True, False):  # batch statistics, then running ones (the same after the same step)
        ours.train(train), theirs.train(train)
        torch.manual_seed(seed)
        out = ours(x)
        torch.manual_seed(seed)
        assert torch.equal(out, theirs(x))


def test_loading_a_model_needs_no_fastai(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": _fastai_small_cnn(4, 1, 8, 0.0).state_dict(),
                "meta": {"arch": "small_cnn", "classes": list("abcd"), "image_size": 8, "width": 8}}, path)
    code = ("import sys; from stagebook.predictor import load_checkpoint; from stagebook.inference import predict_proba\n"
            f"model, meta = load_checkpoint({str(path)!r})\n"
            "import torch; p = predict_proba(model, torch.rand(3, 1, 8, 8))\n"
            "print(p.shape, round(float(p.sum()), 4), 'fastai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["(3,", "4)", "3.0", "False"], done.stderr[-800:]
