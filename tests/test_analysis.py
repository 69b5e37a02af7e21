"""Error-analysis functions: per-class scores, confusions, slices, the relabel queue and Grad-CAM."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from stagebook import analysis, zoo

CLASSES = ["a", "b", "c"]


def test_per_class_and_most_confused():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 1, 2, 2, 0])
    table = analysis.per_class(y, pred, CLASSES).set_index("class")
    assert table.loc["a", "recall"] == 1 / 3 and table.loc["b", "precision"] == 0.5 and table.loc["c", "support"] == 3
    pairs = analysis.most_confused(y, pred, CLASSES)
    assert pairs.iloc[0][["actual", "predicted", "count"]].tolist() == ["a", "b", 2]
    assert len(pairs) == 2


def test_metrics_by_slice_uses_source_group_size_and_image_size():
    items = pd.DataFrame({"path": list("pqrstu"), "source": ["scan", "scan", "scan", "phone", "phone", ""],
                          "unit": ["g1", "g1", "g2", "g3", "g4", "g5"],
                          "width": [8, 8, 8, 16, 16, 8], "height": [8, 8, 8, 16, 16, 8]})
    y, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 0, 0, 2])
    table = analysis.metrics_by_slice(items, y, pred).set_index(["slice", "value"])
    assert table.loc[("source", "phone"), "accuracy"] == 0.0 and table.loc[("source", "scan"), "accuracy"] == 1.0
    assert table.loc[("source", "(none)"), "items"] == 1
    assert table.loc[("group_size", "2-3"), "items"] == 2 and table.loc[("image_size", "16x16"), "errors"] == 2


def test_relabel_queue_holds_only_confident_disagreements_most_confident_first():
    items = pd.DataFrame({"path": ["x", "y", "z", "w"], "sha256": ["1", "2", "3", "4"]})
    y = np.array([0, 1, 2, 0])
    proba = np.array([[0.05, 0.9, 0.05], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3], [0.02, 0.01, 0.97]])
    queue = analysis.relabel_queue(items, y, proba, CLASSES, min_confidence=0.8)
    assert queue.path.tolist() == ["w", "x"] and queue.predicted.tolist() == ["c", "b"]
    assert list(queue.columns) == analysis.QUEUE_COLUMNS and (queue.reviewed_label == "").all()


def test_grad_cam_points_at_the_pixels_that_decide():
    "Channel 0 sees only the left half and drives class 1; channel 1 sees the right half and drives class 0."
    class TwoHalves(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, groups=2, bias=False)
            with torch.no_grad():
                self.conv.weight.fill_(1.0)

        def forward(self, x):
            left, right = x.clone(), x.clone()
            left[..., 4:] = 0
            right[..., :4] = 0
            a = self.conv(torch.cat([left, right], 1))
            return torch.stack([a[:, 1].mean((1, 2)), a[:, 0].mean((1, 2))], 1)

    model = TwoHalves()
    x = torch.rand(2, 1, 8, 8) + 0.1
    layer = zoo.last_conv(model)
    for target, lit, dark in ((1, slice(0, 4), slice(4, 8)), (0, slice(4, 8), slice(0, 4))):
        cam = analysis.grad_cam(model, layer, x, np.array([target, target]))
        assert cam.shape == (2, 8, 8) and cam.max() <= 1 + 1e-6 and cam.min() >= 0
        assert cam[:, :, lit].mean() > 0.3 and cam[:, :, dark].max() < 1e-6


@pytest.mark.parametrize("n", [2, 12, 60, 100])
def test_class_figures_stay_readable_from_2_to_100_classes(n: int):
    "At most 30 classes drawn, every text at 7 pt or more, no two tick labels alike, a note when classes are left out."
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.text import Text

    from stagebook.analysis import MAX_SHOWN, confusion_figure, per_class, per_class_figure, split_balance_figure

    rng = np.random.default_rng(n)
    classes = [f"species_{i:03d}_field_sample" for i in range(n)]
    y = rng.integers(n, size=40 * n)
    pred = np.where(rng.random(len(y)) < 0.8, y, rng.integers(n, size=len(y)))
    counts = pd.DataFrame({"train": rng.integers(50, 99, n), "valid": rng.integers(5, 20, n),
                           "test": rng.integers(5, 20, n)}, index=classes)
    for fig in (confusion_figure(y, pred, classes, "cm"), per_class_figure(per_class(y, pred, classes)),
                split_balance_figure(counts)):
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [t.get_text() for t in (ax.get_yticklabels() if n > 12 or ax.get_ylabel() == "actual"
                                        else ax.get_xticklabels())]
        assert len(ticks) <= max(MAX_SHOWN, 12) and len(set(ticks)) == len(ticks)
        assert all(len(t) <= 14 for t in ticks)
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert min(sizes) >= 7
        assert (f"of {n} classes" in ax.get_title()) == (n > MAX_SHOWN)
        assert fig.get_size_inches()[0] <= 7.0  # fits the page at 7 pt without shrinking
