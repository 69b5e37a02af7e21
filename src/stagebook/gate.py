"""The champion/challenger gate: a challenger replaces the champion only if it is better, and no slower.

Better: paired on the same sealed test items (the champion's recorded predictions, so it costs no second read).
McNemar's test on the discordant pairs (exact two-sided p, and mid-p: the exact p minus the probability of the
observed split, which is less conservative), and a paired-bootstrap CI of the accuracy difference. Which one
decides is the project page's `promote_if` ("ci_low > 0", "mid_p < 0.05", or two joined by "or"/"and").

No slower: both models timed on identical inputs, interleaved (the order alternates each round) after a warm-up, at
batch 1 and at the project page's `latency_batch`; the upper bound of a bootstrap CI of the p95 ratio
(challenger / champion) must stay within 1 + `latency_tolerance` (default 0.10) at every batch size.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import StagebookError

DEFAULT_RULE = "ci_low > 0"
DEFAULT_TOLERANCE = 0.10
RULE_TERMS = ("ci_low", "ci_high", "diff", "p", "exact_p", "mid_p")
_COMPARISON = re.compile(r"^\s*(\w+)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?\d+)?)\s*$")


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict:
    "Discordant counts and McNemar's exact two-sided p and mid-p (binomial with p = 0.5 on the discordant pairs)."
    from scipy.stats import binom

    a, b = np.asarray(champion_correct, bool), np.asarray(challenger_correct, bool)
    gained, lost = int((~a & b).sum()), int((a & ~b).sum())  # challenger right where champion wrong, and back
    n, k = gained + lost, min(gained, lost)
    exact = 1.0 if n == 0 else min(1.0, 2 * float(binom.cdf(k, n, 0.5)))
    mid = 1.0 if n == 0 else min(1.0, exact - float(binom.pmf(k, n, 0.5)))
    return {"gained": gained, "lost": lost, "exact_p": exact, "mid_p": mid}


def paired_difference(champion_correct: np.ndarray, challenger_correct: np.ndarray, repeats: int = 2000,
                      seed: int = 0) -> dict:
    "The accuracy difference (challenger - champion) and its 95% paired-bootstrap CI (scipy.stats.bootstrap)."
    from scipy.stats import bootstrap

    a = np.asarray(champion_correct, float)
    b = np.asarray(challenger_correct, float)
    diff = float(b.mean() - a.mean())
    if np.array_equal(a, b):  # no discordant item: the difference is exactly 0 in every resample
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    res = bootstrap((b, a), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                    n_resamples=repeats, confidence_level=0.95, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True)
    return {"diff": diff, "ci_low": float(res.confidence_interval.low), "ci_high": float(res.confidence_interval.high)}


def check_rule(rule: str, where: str = "project_page.md") -> str:
    "The rule, refused in one line unless it is comparisons of the gate's numbers joined by 'or' / 'and'."
    parts = re.split(r"\s+(?:or|and)\s+", rule.strip())
    for part in parts:
        match = _COMPARISON.match(part)
        if not match or match.group(1) not in RULE_TERMS:
            raise StagebookError(f"{where}: promote_if = {rule!r}: expected comparisons like 'ci_low > 0' or"
                                 f" 'mid_p < 0.05' joined by 'or'/'and', over {', '.join(RULE_TERMS)}.")
    return rule


def rule_holds(rule: str, numbers: dict) -> bool:
    "Evaluate a checked rule ('p' is the mid-p) on the gate's numbers; 'and' binds tighter than 'or'."
    values = {**numbers, "p": numbers["mid_p"]}

    def one(part: str) -> bool:
        term, op, bound = _COMPARISON.match(part).groups()
        x, y = values[term], float(bound)
        return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]

    return any(all(one(p) for p in re.split(r"\s+and\s+", alt)) for alt in re.split(r"\s+or\s+", rule.strip()))


def time_calls(models: list, inputs, repeats: int = 200, warmup: int = 10) -> list[np.ndarray]:
    """Seconds per call of each model on the same inputs, interleaved (the order rotating each round), after warm-up,
    without gradients. On a GPU each call is waited for, so the time is the model's, not the launch's."""
    import torch

    sync = torch.cuda.synchronize if getattr(inputs, "is_cuda", False) else (lambda: None)
    times = [np.empty(max(1, repeats)) for _ in models]
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models:
                model(inputs)
        sync()
        for i in range(len(times[0])):
            for k in range(len(models)):
                at = (i + k) % len(models)
                start = time.perf_counter()
                models[at](inputs)
                sync()
                times[at][i] = time.perf_counter() - start
    return times


def time_pair(champion, challenger, inputs, repeats: int = 200, warmup: int = 10) -> tuple[np.ndarray, np.ndarray]:
    "Seconds per call of each model on the same inputs, interleaved (alternating which goes first), after warm-up."
    a, b = time_calls([champion, challenger], inputs, repeats, warmup)
    return a, b


def p95_ratio(champion_times: np.ndarray, challenger_times: np.ndarray, repeats: int = 2000, seed: int = 0) -> dict:
    "p95 latency of each, their ratio (challenger / champion) and a 95% bootstrap CI of it over the paired rounds."
    a, b = np.asarray(champion_times), np.asarray(challenger_times)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(repeats, len(a)))
    ratios = np.percentile(b[idx], 95, axis=1) / np.percentile(a[idx], 95, axis=1)
    return {"champion_p95_ms": 1000 * float(np.percentile(a, 95)), "challenger_p95_ms": 1000 * float(np.percentile(b, 95)),
            "ratio": float(np.percentile(b, 95) / np.percentile(a, 95)),
            "ratio_ci_low": float(np.percentile(ratios, 2.5)), "ratio_ci_high": float(np.percentile(ratios, 97.5))}


@dataclass
class Verdict:
    "What the gate decided, with every number it decided on."
    better: bool
    no_slower: bool
    rule: str
    tolerance: float
    numbers: dict
    latency: dict = field(default_factory=dict)  # batch size -> p95_ratio()

    @property
    def passed(self) -> bool:
        return self.better and self.no_slower

    def reasons(self) -> list[str]:
        n = self.numbers
        out = [f"better: {'yes' if self.better else 'no'} ({self.rule}; accuracy difference {n['diff']:+.4f}, 95% CI"
               f" {n['ci_low']:+.4f} to {n['ci_high']:+.4f}; McNemar {n['gained']} gained / {n['lost']} lost, exact"
               f" p {n['exact_p']:.3g}, mid-p {n['mid_p']:.3g})"]
        for batch, lat in self.latency.items():
            ok = lat["ratio_ci_high"] <= 1 + self.tolerance
            out.append(f"no slower at batch {batch}: {'yes' if ok else 'no'} (p95 {lat['challenger_p95_ms']:.3f} ms vs"
                       f" {lat['champion_p95_ms']:.3f} ms, ratio {lat['ratio']:.3f}, CI up to {lat['ratio_ci_high']:.3f};"
                       f" limit {1 + self.tolerance:.2f})")
        return out


def judge(champion_correct, challenger_correct, latency: dict[int, dict], rule: str = DEFAULT_RULE,
          tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> Verdict:
    "The gate's verdict from paired correctness on the sealed items and paired latency per batch size."
    numbers = {**mcnemar(champion_correct, challenger_correct),
               **paired_difference(champion_correct, challenger_correct, seed=seed)}
    better = rule_holds(check_rule(rule), numbers)
    no_slower = all(lat["ratio_ci_high"] <= 1 + tolerance for lat in latency.values())
    return Verdict(better, no_slower, rule, tolerance, numbers, latency)
