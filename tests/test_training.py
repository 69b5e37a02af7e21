"""The training toolkit: fast loader and learner (same results as fastai's own dispatch), the recipe's checks, zoo, augmentation."""
import math

import pytest
import torch
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.learner import Learner
from torch import nn

from stagebook import StagebookError, augment, training, zoo


def _data(n=256, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y % 8, (y // 8) * 4] += 1.0  # a learnable pattern: one bright pixel per class
    return x, y


def test_tensor_loader_covers_every_item_once_per_epoch_in_a_seeded_order():
    x, y = _data(100)
    loader = training.TensorLoader(x, y, bs=32, shuffle=True, seed=3)
    first = torch.cat([yb for _, yb in loader])
    assert len(loader) == 4 and sorted(first.tolist()) == sorted(y.tolist())
    again = torch.cat([yb for _, yb in training.TensorLoader(x, y, bs=32, shuffle=True, seed=3)])
    assert torch.equal(first, again)
    assert not torch.equal(first, torch.cat([yb for _, yb in loader])), "each epoch reshuffles"


def _fit(fast=True, epochs=2):
    x, y = _data()
    torch.manual_seed(0)
    learn = training.make_learner(zoo.build("small_cnn", 10), x[:200], y[:200], x[200:], y[200:], 32, seed=0,
                                  weight_decay=0.01, fast=fast)
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def test_fast_learner_trains_exactly_like_fastais_stock_learner_and_optimiser():
    fast, plain = _fit(True), _fit(False)
    assert type(fast) is training.FastLearner and type(plain) is Learner
    assert fast.recorder.lrs == plain.recorder.lrs and fast.opt.hypers == plain.opt.hypers
    assert fast.recorder.values == plain.recorder.values
    for a, b in zip(fast.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_gives_identical_training():
    torch.use_deterministic_algorithms(True)
    try:
        a, b = _fit(), _fit()
    finally:
        torch.use_deterministic_algorithms(False)
    assert a.recorder.values == b.recorder.values
    assert training.epoch_history(a)["train_loss"] == training.epoch_history(b)["train_loss"]


def test_initial_loss_check_passes_a_fresh_model_and_fails_a_confident_one():
    x, y = _data()
    torch.manual_seed(0)
    model = zoo.build("small_cnn", 10)
    assert abs(training.check_init_loss(model, x, y, 10) - math.log(10)) < 0.1 * math.log(10)
    with torch.no_grad():
        model[-1].bias.copy_(torch.arange(10.0) * 3)  # a head that is sure of class 9 before training
    with pytest.raises(training.RecipeCheckFailed, match="sanity check failed: loss at initialisation"):
        training.check_init_loss(model, x, y, 10)


class InputIndependent(nn.Module):
    "A model that cannot learn the task: its output ignores the input."

    def __init__(self, classes=10):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def test_overfit_one_batch_passes_a_real_model_and_fails_one_that_cannot_learn():
    x, y = _data(64)
    torch.manual_seed(0)
    losses = training.overfit_one_batch(zoo.build("small_cnn", 10), x, y, lr=0.01, max_steps=200, threshold=0.05)
    assert losses[-1] < 0.05 and len(losses) < 200
    with pytest.raises(training.RecipeCheckFailed, match="overfit-one-batch failed: .* after 200 steps"):
        training.overfit_one_batch(InputIndependent(), x, y, lr=0.01, max_steps=200, threshold=0.05)


@pytest.mark.parametrize("arch", zoo.ARCHITECTURES)
def test_every_architecture_takes_small_grayscale_images(arch):
    model = zoo.build(arch, 7, channels=1, dropout=0.2).eval()
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 7)


def test_pretrained_weights_come_from_a_local_file_only(tmp_path):
    import torchvision
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = zoo.build("resnet18", 10, channels=1, pretrained_path=tmp_path / "r18.pth")
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))  # RGB filters summed
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    with pytest.raises(StagebookError, match="nope.pth: pretrained weights for resnet18 not found"):
        zoo.build("resnet18", 10, pretrained_path=tmp_path / "nope.pth")
    with pytest.raises(StagebookError, match="unknown arch 'resnet99'"):
        zoo.build("resnet99", 10)


def test_augmentation_bounds_are_checked_and_sampling_is_seeded():
    policy = augment.from_params({"rotate": 10, "translate": 0.1, "scale_min": 0.9, "scale_max": 1.1}, "p.yaml")
    x = torch.rand(4, 1, 8, 8)
    a = policy(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, policy(x, torch.Generator().manual_seed(1)))
    assert augment.from_params({}).identity and augment.from_params(None)(x) is x
    with pytest.raises(StagebookError, match=r"p.yaml: augment.rotate = 90 is outside its valid range \[0.0, 45.0\]"):
        augment.from_params({"rotate": 90}, "p.yaml")
    with pytest.raises(StagebookError, match="unknown transform"):
        augment.from_params({"shear": 3}, "p.yaml")


def test_lr_finder_restores_the_weights_and_plots():
    x, y = _data()
    torch.manual_seed(0)
    learn = training.make_learner(zoo.build("small_cnn", 10), x[:200], y[:200], x[200:], y[200:], 32, seed=0)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    valley, fig = training.find_lr(learn)
    assert 1e-7 < valley < 10 and fig.axes
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
