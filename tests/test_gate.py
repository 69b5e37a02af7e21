"""The gate's statistics: McNemar exact and mid-p, the paired-bootstrap CI, the rule, and interleaved latency."""
import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from stagebook import StagebookError
from stagebook.gate import check_rule, judge, mcnemar, p95_ratio, paired_difference, rule_holds, time_pair


def _pairs(gained: int, lost: int, same: int = 100):
    "Correctness of champion and challenger: `same` both right, then the discordant items."
    a = np.r_[np.ones(same), np.zeros(gained), np.ones(lost)].astype(bool)
    b = np.r_[np.ones(same), np.ones(gained), np.zeros(lost)].astype(bool)
    return a, b


def test_mcnemar_exact_matches_the_binomial_test_and_mid_p_is_smaller():
    a, b = _pairs(gained=12, lost=3)
    out = mcnemar(a, b)
    assert (out["gained"], out["lost"]) == (12, 3)
    assert out["exact_p"] == pytest.approx(binomtest(3, 15, 0.5).pvalue)
    # mid-p by hand: P(X < 3) + P(X = 3) / 2, doubled, for X ~ Bin(15, 1/2)
    from math import comb
    by_hand = 2 * (sum(comb(15, k) for k in range(3)) + comb(15, 3) / 2) / 2 ** 15
    assert out["mid_p"] == pytest.approx(by_hand) and out["mid_p"] < out["exact_p"]
    assert mcnemar(*_pairs(0, 0))["exact_p"] == 1.0


def test_the_bootstrap_ci_brackets_the_difference_and_excludes_zero_only_when_clearly_better():
    clear = paired_difference(*_pairs(gained=30, lost=2))
    assert clear["ci_low"] > 0 and clear["ci_low"] <= clear["diff"] <= clear["ci_high"]
    tie = paired_difference(*_pairs(gained=5, lost=5))
    assert tie["ci_low"] < 0 < tie["ci_high"] and tie["diff"] == 0


@pytest.mark.parametrize("rule, numbers, holds", [
    ("ci_low > 0", {"ci_low": 0.01, "mid_p": 0.5}, True),
    ("ci_low > 0", {"ci_low": -0.01, "mid_p": 0.001}, False),
    ("p < 0.05", {"ci_low": -0.01, "mid_p": 0.01}, True),
    ("ci_low > 0 or mid_p < 0.05", {"ci_low": -0.01, "mid_p": 0.01}, True),
    ("ci_low > 0 and mid_p < 0.05", {"ci_low": -0.01, "mid_p": 0.01}, False),
])
def test_the_project_page_rule_decides(rule, numbers, holds):
    assert rule_holds(check_rule(rule), {"ci_high": 0, "diff": 0, "exact_p": 1, **numbers}) is holds


@pytest.mark.parametrize("rule", ["accuracy > 0.9", "ci_low >> 0", "import os", ""])
def test_a_bad_rule_is_one_line(rule):
    with pytest.raises(StagebookError, match="promote_if = .* expected comparisons like 'ci_low > 0'"):
        check_rule(rule)


def test_a_slower_model_is_seen_as_slower_and_an_equal_one_is_not():
    # two orders of magnitude apart, so that a loaded machine (another test worker beside) cannot close the gap
    fast = torch.nn.Linear(64, 10)
    slow = torch.nn.Sequential(torch.nn.Linear(64, 512), *[torch.nn.Linear(512, 512) for _ in range(24)],
                               torch.nn.Linear(512, 10))
    x = torch.randn(64, 64)
    a, b = time_pair(fast, slow, x, repeats=40)
    slower = p95_ratio(a, b)
    assert slower["ratio_ci_low"] > 1.5
    a, b = time_pair(fast, fast, x, repeats=60)  # a model against itself: no ratio near the slow one's, even under load
    assert p95_ratio(a, b)["ratio"] < slower["ratio_ci_low"]


def test_the_verdict_needs_better_and_no_slower():
    lat_ok = {1: {"ratio": 1.0, "ratio_ci_high": 1.05, "champion_p95_ms": 1, "challenger_p95_ms": 1}}
    lat_slow = {1: {"ratio": 1.4, "ratio_ci_high": 1.6, "champion_p95_ms": 1, "challenger_p95_ms": 1.4}}
    better = judge(*_pairs(30, 2), lat_ok)
    assert better.passed and "better: yes" in better.reasons()[0]
    slower = judge(*_pairs(30, 2), lat_slow)
    assert slower.better and not slower.no_slower and "no slower at batch 1: no" in slower.reasons()[1]
    worse = judge(*_pairs(2, 30), lat_ok)
    assert not worse.better and not worse.passed
