"""Error analysis: where a model is wrong, on which slices, which labels look wrong, and where it looks (Grad-CAM).

Pure functions of labels, predictions and the split table, so stage 05 (validation) and any later analysis share
them. The relabel queue is a CSV people fill in (`reviewed_label`) and stage 01 reads back (`relabel.apply`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

QUEUE_COLUMNS = ["path", "sha256", "label", "predicted", "confidence", "loss", "reviewed_label", "reviewer", "note"]


def per_class(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    "Precision, recall, F1 and support for each class."
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(len(classes)), zero_division=0)
    return pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s.astype(int)})


def item_losses(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    "Cross-entropy of each item under the model: -log p(true class), clipped so a zero probability stays finite."
    return -np.log(np.clip(np.asarray(proba)[np.arange(len(y)), y], 1e-12, 1))


def confusion_figure(y: np.ndarray, pred: np.ndarray, classes: list[str], title: str):
    "The confusion matrix as a matplotlib figure, counts in the cells."
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    fig, ax = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay(confusion_matrix(y, pred, labels=range(len(classes))), display_labels=classes).plot(
        ax=ax, colorbar=False)
    ax.set_title(title)
    return fig


def most_confused(y: np.ndarray, pred: np.ndarray, classes: list[str], top: int = 10) -> pd.DataFrame:
    "The (actual, predicted) pairs the model mixes up most often, with the share of the actual class."
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=range(len(classes)))
    rows = [(classes[i], classes[j], int(cm[i, j]), cm[i, j] / max(1, cm[i].sum()))
            for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j]]
    table = pd.DataFrame(rows, columns=["actual", "predicted", "count", "share_of_actual"])
    return table.sort_values(["count", "actual", "predicted"], ascending=[False, True, True]).head(top).reset_index(drop=True)


def slice_columns(items: pd.DataFrame) -> pd.DataFrame:
    "The metadata to slice by: source, annotator, size of the item's group (declared or near-duplicate), image size."
    out = pd.DataFrame(index=items.index)
    for column in ("source", "annotator"):
        if column in items and items[column].fillna("").astype(str).str.len().gt(0).any():
            out[column] = items[column].fillna("(none)").astype(str).replace("", "(none)")
    unit = items["unit"] if "unit" in items else items["path"]
    sizes = unit.map(unit.value_counts())
    out["group_size"] = np.where(sizes <= 1, "1", np.where(sizes <= 3, "2-3", "4+"))
    if {"width", "height"} <= set(items.columns):
        out["image_size"] = items.width.astype(int).astype(str) + "x" + items.height.astype(int).astype(str)
    return out


def metrics_by_slice(items: pd.DataFrame, y: np.ndarray, pred: np.ndarray, min_items: int = 1) -> pd.DataFrame:
    "Accuracy and error count for every value of every slice column, beside the overall accuracy."
    slices = slice_columns(items.reset_index(drop=True))
    correct = np.asarray(y) == np.asarray(pred)
    rows = []
    for column in slices.columns:
        for value, index in slices.groupby(column).groups.items():
            hits = correct[np.asarray(index)]
            if len(hits) >= min_items:
                rows.append({"slice": column, "value": str(value), "items": len(hits), "errors": int((~hits).sum()),
                             "accuracy": float(hits.mean())})
    table = pd.DataFrame(rows, columns=["slice", "value", "items", "errors", "accuracy"])
    table["vs_overall"] = table.accuracy - float(correct.mean()) if len(correct) else 0.0
    return table


def relabel_queue(items: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: list[str],
                  min_confidence: float = 0.9, limit: int = 50) -> pd.DataFrame:
    "Items whose label the model confidently contradicts, most confident first: candidates for human review."
    proba = np.asarray(proba)
    pred = proba.argmax(1)
    confidence = proba.max(1)
    loss = item_losses(proba, y)
    suspect = np.flatnonzero((pred != y) & (confidence >= min_confidence))
    suspect = suspect[np.argsort(-confidence[suspect], kind="stable")][:limit]
    items = items.reset_index(drop=True)
    return pd.DataFrame({"path": items.path.values[suspect],
                         "sha256": items.sha256.values[suspect] if "sha256" in items else "",
                         "label": [classes[i] for i in y[suspect]], "predicted": [classes[i] for i in pred[suspect]],
                         "confidence": confidence[suspect].round(4), "loss": loss[suspect].round(4),
                         "reviewed_label": "", "reviewer": "", "note": ""}, columns=QUEUE_COLUMNS)


def grad_cam(model, layer, x, target: np.ndarray) -> np.ndarray:
    "Grad-CAM heatmaps in [0, 1], one per input, for class `target[i]`, upsampled to the input size."
    import torch
    import torch.nn.functional as F

    model.eval()
    saved = {}
    hooks = [layer.register_forward_hook(lambda m, i, o: saved.__setitem__("act", o)),
             layer.register_full_backward_hook(lambda m, gi, go: saved.__setitem__("grad", go[0]))]
    try:
        device = next(model.parameters()).device  # on the GPU when the model is
        x = torch.as_tensor(x).to(device).clone().requires_grad_(True)
        logits = model(x)
        model.zero_grad()
        logits.gather(1, torch.as_tensor(target).to(device).view(-1, 1)).sum().backward()
        act, grad = saved["act"].detach(), saved["grad"].detach()
    finally:
        for hook in hooks:
            hook.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return (cam / peak[:, None, None]).cpu().numpy()
