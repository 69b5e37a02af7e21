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


MAX_SHOWN = 30  # classes drawn in one figure; beyond it, the ones that matter most (a note says which)


def short_label(text, width: int = 14) -> str:
    "A class name cut to `width` characters, keeping both ends (`pneumo…_left`), so many labels stay apart at 8 pt."
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_labels(classes, width: int = 14) -> list[str]:
    """Labels for many classes: what all of them share at the start or end (`species_`, `_v2`) is dropped when a
    label would not fit, then each is cut to `width` keeping both ends."""
    import os

    names = [str(c) for c in classes]
    if len(names) > 1 and max(map(len, names)) > width:
        prefix = os.path.commonprefix(names)
        suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
        cut = [n[len(prefix):len(n) - len(suffix)] for n in names]
        if all(cut):
            names = cut
    return [short_label(n, width) for n in names]


def confusion_figure(y: np.ndarray, pred: np.ndarray, classes: list[str], title: str, top: int = MAX_SHOWN):
    """The confusion matrix as a matplotlib figure that stays readable from 2 to 100+ classes: counts in the cells up
    to 15 classes, rotated and shortened labels, and beyond `top` classes only the `top` with the most errors."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    n = len(classes)
    cm = confusion_matrix(y, pred, labels=range(n))
    shown = np.arange(n)
    if n > top:  # errors a class takes part in, as the actual or the predicted class
        errors = cm.sum(1) + cm.sum(0) - 2 * np.diag(cm)
        shown = np.sort(np.argsort(-errors, kind="stable")[:top])
        title += f"\n(the {top} of {n} classes with the most errors)"
    sub, k = cm[np.ix_(shown, shown)], len(shown)
    labels = short_labels([classes[i] for i in shown])
    side = min(6.2, max(3.2, 0.19 * k + 1.6 + 0.05 * max(len(t) for t in labels)))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(sub, cmap="Blues", vmin=0)
    rotate = max(len(t) for t in labels) > 2  # short labels fit side by side even at 30 classes
    ax.set_xticks(range(k), labels, rotation=90 if rotate else 0, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 15:
        top_count = sub.max() or 1
        for (i, j), v in np.ndenumerate(sub):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * top_count else "black")
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("actual", fontsize=9)
    ax.set_title(title, fontsize=9)
    return fig


def per_class_figure(per_class: pd.DataFrame, title: str = "Per-class scores", top: int = MAX_SHOWN):
    """Precision, recall and F1 per class: grouped columns up to 12 classes; beyond, F1 as horizontal bars, worst
    first, at most `top` of them (a note says how many are not drawn)."""
    import matplotlib.pyplot as plt

    scores = ["precision", "recall", "f1"]
    if len(per_class) <= 12:
        fig, ax = plt.subplots(figsize=(7, 3))
        shown = per_class.assign(label=short_labels(per_class["class"], 10)).set_index("label")
        shown[scores].plot.bar(ax=ax, width=0.8)
        ax.set_ylim(max(0, per_class[scores].min().min() - 0.05), 1.0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over them
        ax.set_xlabel("class")
        ax.tick_params(labelsize=8)
        ax.set_title(title, fontsize=9)
        return fig
    worst = per_class.sort_values(["f1", "class"], kind="stable").head(top)
    fig, ax = plt.subplots(figsize=(5.5, 0.17 * len(worst) + 1.0))
    ax.barh(short_labels(worst["class"])[::-1], worst.f1.to_numpy()[::-1], color="tab:blue")
    ax.set_xlim(max(0, worst.f1.min() - 0.05), 1.0)
    ax.set_xlabel("F1", fontsize=9)
    ax.tick_params(labelsize=8)
    more = f" (the {len(worst)} lowest of {len(per_class)} classes)" if len(per_class) > len(worst) else ""
    ax.set_title(f"{title}: F1{more}", fontsize=9)
    return fig


def split_balance_figure(counts: pd.DataFrame, proportions: dict[str, float] | None = None, top: int = MAX_SHOWN):
    """Items per class and split (`counts`: one row per class, columns train, valid, test): grouped columns up to 12
    classes; beyond, stacked horizontal bars, and beyond `top` the classes furthest from the target proportions."""
    import matplotlib.pyplot as plt

    columns = ["train", "valid", "test"]
    if len(counts) <= 12:
        ax = counts[columns].set_axis(short_labels(counts.index, 10)).plot.bar(figsize=(7, 3))
        ax.set_title("Items per class and split", fontsize=9)
        ax.set_xlabel("class")
        ax.set_ylabel("items")
        ax.tick_params(labelsize=8)
        ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # never over the bars
        return ax.figure
    shares = counts[columns].div(counts[columns].sum(axis=1), axis=0)
    title = "Items per class and split"
    shown = counts
    if len(counts) > top:
        target = pd.Series(proportions or {"train": 0.7, "valid": 0.15, "test": 0.15})
        off = (shares - target[columns]).abs().max(axis=1)
        shown = counts.loc[off.sort_values(ascending=False, kind="stable").index[:top]]
        title += f" (the {top} of {len(counts)} classes furthest from the target shares)"
    shown = shown.iloc[::-1]
    fig, ax = plt.subplots(figsize=(6.2, 0.17 * len(shown) + 1.2))
    left, names = np.zeros(len(shown)), short_labels(shown.index)
    for column, colour in zip(columns, ("tab:blue", "tab:orange", "tab:green")):
        ax.barh(names, shown[column], left=left, color=colour, label=column)
        left += shown[column].to_numpy()
    ax.set_xlabel("items", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title, fontsize=9)
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


def show_image(ax, pixels, dark: bool = False) -> None:
    "Draw (C, H, W) pixels in [0, 1]: grayscale as ink on paper (or `dark`, under a heat map), colour as it is."
    image = np.asarray(pixels)
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray" if dark else "gray_r", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
