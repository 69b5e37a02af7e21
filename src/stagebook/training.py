"""Training with fastai at the speed of a plain PyTorch loop, and the recipe's checks as functions that fail loudly.

Why not fastai's own DataLoader: on small images it collates item by item and casts every batch to fastai's tensor
subclasses, which made training about 5x slower than a plain loop. Here the data are tensors decoded once;
`TensorLoader` yields slices of them (augmented per batch), and `FastLearner` dispatches each event only to the
callbacks that handle it. The loop is still fastai's `Learner`: one-cycle, callbacks, recorder, lr_find.
"""
from __future__ import annotations

import copy
import math
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import CastToTensor, Learner
from fastai.optimizer import OptimWrapper
from torch import nn

from .errors import StagebookError
from .inference import device_of, predict_proba  # noqa: F401 (predict_proba: part of this module's API)


class RecipeCheckFailed(StagebookError):
    "A phase of the training recipe did not do what it must (sane initial loss, overfitting one batch, fitting all data)."


class TensorLoader:
    "Batches sliced from in-memory tensors, shuffled by a seeded generator, optionally augmented batch by batch."

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int, shuffle: bool = False, seed: int = 0,
                 transform=None, drop_last: bool = False):
        self.x, self.y, self.bs, self.shuffle, self.transform, self.drop_last = x, y, bs, shuffle, transform, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")

    @property
    def n(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return self.n // self.bs if self.drop_last else math.ceil(self.n / self.bs)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for i in range(len(self)):
            idx = order[i * self.bs:(i + 1) * self.bs]
            xb = self.x[idx]
            if self.transform is not None:
                xb = self.transform(xb, self.generator)
            yield xb.to(self.device), self.y[idx].to(self.device)

    def to(self, device):
        self.device = torch.device(device)
        return self

    def one_batch(self):
        return next(iter(self))


class FastLearner(Learner):
    "fastai's Learner, with each event sent only to the callbacks that define it (the same calls, less overhead)."

    def _call_one(self, event_name):
        key = (event_name, tuple(map(id, self.cbs)))
        cache = self.__dict__.setdefault("_dispatch", {})
        handlers = cache.get(key)
        if handlers is None:  # `after_fit` also resets every callback's `run` flag, so it goes to all of them
            handlers = [cb for cb in self.cbs.sorted("order")
                        if event_name == "after_fit" or callable(getattr(type(cb), event_name, None))]
            cache[key] = handlers
        for cb in handlers:
            cb(event_name)

    def __call__(self, event_or_list):
        if isinstance(event_or_list, str):
            return self._call_one(event_or_list)
        for event_name in event_or_list:
            self._call_one(event_name)

    def fit_one_cycle(self, n_epoch, lr_max=None, div=25., div_final=1e5, pct_start=0.25, wd=None, moms=None,
                      cbs=None, reset_opt=False, start_epoch=0):
        "fastai's `fit_one_cycle`, with the schedule evaluated by `combine_scheds` below (same values, no torch ops)."
        from fastai.callback.schedule import ParamScheduler, SchedCos
        from fastcore.foundation import L

        if self.opt is None:
            self.create_opt()
        self.opt.set_hyper("lr", self.lr if lr_max is None else lr_max)
        lr_max = np.array([h["lr"] for h in self.opt.hypers])

        def cos(start, middle, end):
            return combine_scheds([pct_start, 1 - pct_start], [SchedCos(start, middle), SchedCos(middle, end)])

        scheds = {"lr": cos(lr_max / div, lr_max, lr_max / div_final), "mom": cos(*(self.moms if moms is None else moms))}
        self.fit(n_epoch, cbs=ParamScheduler(scheds) + L(cbs), reset_opt=reset_opt, wd=wd, start_epoch=start_epoch)

    def _set_device(self, b):
        "TensorLoader batches are already on the loader's device; fastai's generic move walks every batch again."
        if isinstance(self.dl, TensorLoader) and next(self.model.parameters()).device == self.dl.device:
            return b
        return super()._set_device(b)


def combine_scheds(pcts, scheds):
    """fastai's `combine_scheds` with the same float32 arithmetic, in NumPy scalars rather than torch ops.

    fastai's version runs a handful of tensor operations per call; called twice per batch by the one-cycle
    schedule, that was a noticeable share of a small model's step.
    """
    bounds = np.cumsum(np.array([0, *pcts], dtype=np.float32), dtype=np.float32)
    limit = len(bounds) - 2

    def _inner(pos):
        p = np.float32(pos)
        idx = min(int(np.flatnonzero(p >= bounds).max()), limit)
        return scheds[idx](float((p - bounds[idx]) / (bounds[idx + 1] - bounds[idx])))
    return _inner


class FastOptimWrapper(OptimWrapper):
    """fastai's wrapper around a torch optimiser, with the per-batch hyper-parameter reads and writes made cheap.

    The one-cycle scheduler sets lr and momentum before every batch and the recorder reads lr after it; fastai's
    generic versions cost about 0.7 ms per batch, a tenth of a small model's step. Same values, same keys.
    """

    @property
    def hypers(self):
        out = []
        for group in self.opt.param_groups:
            values = {}
            for key, value in group.items():
                if key == "params":
                    continue
                if isinstance(value, (list, tuple)):
                    for i, v in enumerate(value):
                        values[self.fwd_map.get(f"{key}__{i}", f"{key}__{i}")] = v
                else:
                    values[self.fwd_map.get(key, key)] = value
            out.append(values)
        return out

    def set_hyper(self, k, v):
        from fastai.optimizer import set_item_pg

        groups = self.opt.param_groups
        if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == len(groups):
            # one value per parameter group, as fastai's schedules give them; as Python floats, because torch's
            # optimiser step is markedly slower when lr and betas are NumPy scalars
            values = [float(x) for x in v]
        elif isinstance(v, (int, float)):
            values = [float(v)] * len(groups)
        else:
            return super().set_hyper(k, v)
        key = self.bwd_map[k]
        for group, value in zip(groups, values):
            set_item_pg(group, key, value)


class KeepBest(Callback):
    "Remember the weights of the epoch with the lowest validation loss and restore them at the end (early stopping's partner)."
    order = 70  # after the Recorder has the epoch's values

    def before_fit(self):
        self.best, self.best_epoch, self.state = float("inf"), -1, None

    def after_epoch(self):
        loss = self.recorder.values[-1][1] if self.recorder.values else float("inf")
        if loss < self.best:
            self.best, self.best_epoch = loss, self.epoch
            self.state = copy.deepcopy(self.learn.model.state_dict())

    def after_fit(self):
        if self.state is not None:
            self.learn.model.load_state_dict(self.state)


class EpochProgress(Callback):
    "Each finished epoch as stage progress (`stage.progress`), which `stagebook run` shows at a terminal."
    order = 71

    def after_epoch(self):
        from .stage import progress
        progress(f"epoch {self.epoch + 1}/{self.n_epoch}")


def make_learner(model: nn.Module, x_train, y_train, x_valid, y_valid, batch_size: int, seed: int,
                 weight_decay: float = 0.0, augment=None, progress: bool = False, metrics=None,
                 fast: bool = True, device=None, mixed_precision: bool = False) -> Learner:
    """A fastai Learner over in-memory tensors: AdamW, plain cross-entropy, seeded shuffling and augmentation.

    `device` (a torch.device, default CPU) is where batches and the model go: fastai moves the model to
    `dls.device` when fitting, so the loaders' device is the one that counts. `mixed_precision` uses fastai's
    fp16 callback on CUDA (ignored on the CPU). `fast=False` gives fastai's stock Learner and OptimWrapper on the
    same data (the tests compare the two).
    """
    from fastai.callback.progress import ProgressCallback
    from fastai.metrics import accuracy

    tensors = [torch.as_tensor(a) for a in (x_train, y_train, x_valid, y_valid)]
    train = TensorLoader(tensors[0], tensors[1], batch_size, shuffle=True, seed=seed, transform=augment)
    valid = TensorLoader(tensors[2], tensors[3], 1024)
    from fastai.data.core import DataLoaders
    learner, wrapper = (FastLearner, FastOptimWrapper) if fast else (Learner, OptimWrapper)
    device = torch.device(device or "cpu")
    learn = learner(DataLoaders(train.to(device), valid.to(device), device=device), model.to(device),
                    loss_func=nn.CrossEntropyLoss(),
                    opt_func=partial(wrapper, opt=torch.optim.AdamW), wd=weight_decay,
                    metrics=metrics if metrics is not None else [accuracy], path=Path(tempfile.gettempdir()))
    learn.remove_cb(CastToTensor)  # our batches are plain tensors already; the cast slows every operation down
    learn.add_cb(EpochProgress())
    if not progress:
        learn.remove_cb(ProgressCallback)
    if mixed_precision and device.type == "cuda":
        learn.to_fp16()
    return learn


def epoch_history(learn: Learner) -> dict[str, list[float]]:
    "Per-epoch curves from the recorder: train_loss, valid_loss and each metric."
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    return {name: [float(row[i]) for row in learn.recorder.values] for i, name in enumerate(names)}


def accuracy(model: nn.Module, x, y) -> float:
    return float((predict_proba(model, x).argmax(1) == np.asarray(y)).mean())


@torch.no_grad()
def check_init_loss(model: nn.Module, xb, yb, n_classes: int, tolerance: float = 0.1) -> float:
    "The loss of the untrained model must be within `tolerance` (relative) of ln(n_classes); returns the loss."
    model.eval()
    device = device_of(model)
    loss = float(nn.functional.cross_entropy(model(torch.as_tensor(xb).to(device)), torch.as_tensor(yb).to(device)))
    expected = math.log(n_classes)
    if abs(loss - expected) > tolerance * expected:
        raise RecipeCheckFailed(f"sanity check failed: loss at initialisation is {loss:.3f}, more than"
                                f" {tolerance:.0%} away from ln({n_classes}) = {expected:.3f}; check the labels, the"
                                " last layer's initialisation and the loss function")
    return loss


def overfit_one_batch(model: nn.Module, xb, yb, lr: float, max_steps: int, threshold: float) -> list[float]:
    "Train on one batch until its loss is below `threshold`; fails the stage if `max_steps` are not enough."
    device = device_of(model)
    xb, yb = torch.as_tensor(xb).to(device), torch.as_tensor(yb).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr) if any(p.requires_grad for p in model.parameters()) else None
    losses = []
    for _ in range(max_steps):
        loss = nn.functional.cross_entropy(model(xb), yb)
        losses.append(loss.item())
        if losses[-1] < threshold:
            return losses
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    raise RecipeCheckFailed(f"overfit-one-batch failed: the loss on one batch of {len(xb)} is still"
                            f" {losses[-1]:.3f} (> {threshold}) after {max_steps} steps; a model that cannot"
                            " memorise one batch has a bug (frozen layers, wrong labels, lr too low)")


def find_lr(learn: Learner):
    "fastai's learning-rate finder (weights restored afterwards); returns (valley lr, figure)."
    import matplotlib.pyplot as plt
    from fastai.callback.schedule import lr_find, valley  # noqa: F401 (adds Learner.lr_find)

    state = copy.deepcopy(learn.model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        learn.path = Path(tmp)  # lr_find saves and reloads the weights under learn.path
        suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=False)
    learn.model.load_state_dict(state)
    fig, ax = plt.subplots(figsize=(4, 2.6))  # two fit side by side in a report at >= 7 pt
    lrs, losses = learn.recorder.lrs, [float(v) for v in learn.recorder.losses]
    ax.plot(lrs, losses)
    ax.axvline(suggestion.valley, color="tab:red", ls="--", label=f"valley {suggestion.valley:.2g}")
    ax.set_xscale("log"); ax.set_xlabel("learning rate"); ax.set_ylabel("smoothed loss"); ax.legend()
    ax.set_title("Learning-rate finder")
    return float(suggestion.valley), fig


def fit_regularised(build, x_train, y_train, x_valid, y_valid, *, batch_size: int, seed: int, epochs: int, lr: float,
                    weight_decay: float, augment=None, patience: int | None = None, device=None,
                    mixed_precision: bool = False, progress: bool = False, trainer: str = "single",
                    world_size: int = 2):
    """The recipe's regularise phase: `build()` (a fresh model, seeded) trained with one-cycle, weight decay and
    augmentation, early stopping on validation loss with the best epoch's weights kept. `trainer` single, or ddp
    (torch DDP over `world_size` processes, `stagebook.distributed`). Returns (model in eval mode, per-epoch
    history, best epoch). Stage 04's phase and each of its search variants call this one function."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (adds Learner.fit_one_cycle)
    from fastai.callback.tracker import EarlyStoppingCallback

    device = torch.device(device or "cpu")
    torch.manual_seed(seed)  # every phase starts from the same initial weights
    model = build().to(device)
    if trainer == "ddp":
        from .distributed import fit_ddp
        state, history, best_epoch = fit_ddp(build, x_train, y_train, x_valid, y_valid, batch_size, seed, epochs, lr,
                                             weight_decay, augment, world_size, device.type, patience)
        model.load_state_dict(state)
        return model.eval(), history, best_epoch
    learn = make_learner(model, x_train, y_train, x_valid, y_valid, batch_size, seed, weight_decay, augment,
                         progress=progress, device=device, mixed_precision=mixed_precision)
    keep = KeepBest()
    callbacks = [keep] if patience is None else [EarlyStoppingCallback(monitor="valid_loss", patience=patience), keep]
    learn.fit_one_cycle(epochs, lr, cbs=callbacks)
    return learn.model.eval(), epoch_history(learn), keep.best_epoch
