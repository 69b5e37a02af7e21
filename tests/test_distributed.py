"""DDP training on CPU (gloo): two processes end within a point of one process on the same seed."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from stagebook import StagebookError
from stagebook.distributed import fit_ddp
from stagebook.training import accuracy, make_learner
from stagebook.zoo import build


def _digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = np.random.default_rng(0).permutation(len(y))
    train, valid = order[:1400], order[1400:]
    return x[train], y[train], x[valid], y[valid]


def test_two_processes_land_within_a_point_of_one():
    x_train, y_train, x_valid, y_valid = _digits()
    make = partial(build, "small_cnn", 10, 1, 16, 0.1)
    torch.manual_seed(0)
    single = make()
    make_learner(single, x_train, y_train, x_valid, y_valid, 64, 0, 0.01).fit_one_cycle(8, 0.01)
    state, history, _ = fit_ddp(make, x_train, y_train, x_valid, y_valid, 64, 0, 8, 0.01, 0.01, world_size=2)
    ddp = make()
    ddp.load_state_dict(state)
    one, two = accuracy(single, x_valid, y_valid), accuracy(ddp.eval(), x_valid, y_valid)
    assert one > 0.9 and two > 0.9, (one, two)  # both learnt
    assert abs(one - two) <= 0.01, (one, two)
    assert len(history["valid_loss"]) == 8


def test_more_gpus_than_the_machine_has_is_one_line():
    with pytest.raises(StagebookError, match="needs as many GPUs"):
        fit_ddp(partial(build, "small_cnn", 10, 1, 16), torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2, 0, 1, 0.01, world_size=64, device="cuda")
