"""The sealed-test stage's arithmetic: the accuracy's exact interval, the latency, validation beside the CI."""
import time

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from stagebook import evaluation


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (290, 299), (299, 299), (1, 1)])
def test_accuracy_interval_is_clopper_pearson(k, n):
    correct = np.r_[np.ones(k), np.zeros(n - k)]
    acc, low, high = evaluation.accuracy_interval(correct)
    exact = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert acc == pytest.approx(k / n)
    assert (low, high) == pytest.approx((exact.low, exact.high), abs=1e-9)
    assert low <= acc <= high


def test_a_perfect_score_still_has_an_interval():
    acc, low, high = evaluation.accuracy_interval(np.ones(10))
    assert acc == high == 1.0
    assert low == pytest.approx(0.025 ** (1 / 10))  # closed form at k = n; a bootstrap would give [1, 1]


def test_the_interval_covers_the_true_accuracy_at_least_as_often_as_promised():
    rng = np.random.default_rng(0)
    hits = sum(low <= 0.9 <= high for low, high in
               (evaluation.accuracy_interval(rng.random(40) < 0.9)[1:] for _ in range(2000)))
    assert hits / 2000 >= 0.95


@pytest.mark.parametrize("bad,match", [([], "no test items"), ([1, 0], "level")])
def test_accuracy_interval_refuses_what_it_cannot_answer(bad, match):
    with pytest.raises(ValueError, match=match):
        evaluation.accuracy_interval(bad, level=1.5 if bad else 0.95)


class Slow(torch.nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.linear, self.seconds = torch.nn.Linear(4, 2), seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.linear(x.flatten(1))


def test_latency_is_the_median_forward_pass_in_milliseconds():
    fast = evaluation.latency_ms(Slow(0.0), (1, 1, 2, 2), repeats=20, warmup=2)
    slow = evaluation.latency_ms(Slow(0.01), (1, 1, 2, 2), repeats=20, warmup=2)
    assert 0 < fast < 10 <= slow < 1000


def test_validation_outside_the_interval_is_flagged():
    _, low, high = evaluation.accuracy_interval(np.r_[np.ones(90), np.zeros(10)])
    inside = evaluation.validation_gap(0.92, 0.90, low, high)
    optimistic = evaluation.validation_gap(0.99, 0.90, low, high)
    assert not inside["flagged"] and optimistic["flagged"]
    assert optimistic["gap"] == pytest.approx(0.09) and optimistic["ci_half_width"] == pytest.approx((high - low) / 2)
