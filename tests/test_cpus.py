"""Cores: stagebook's parallel work follows the process's CPU affinity and `OMP_NUM_THREADS`, not the machine."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stagebook import cpus

ASK = "from stagebook import cpus; print(cpus.available(), cpus.threads())"


def _in_child(env: dict, preexec_fn=None) -> tuple[int, int]:
    "What a fresh interpreter with `env` (and `preexec_fn` run in it first) reports: (available, threads)."
    done = subprocess.run([sys.executable, "-c", ASK], env=env, capture_output=True, text=True, check=True,
                          preexec_fn=preexec_fn)
    return tuple(map(int, done.stdout.split()))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_process_pinned_to_one_core_uses_one():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    core = sorted(os.sched_getaffinity(0))[0]
    assert _in_child(env, preexec_fn=lambda: os.sched_setaffinity(0, {core})) == (1, 1)  # pinned in the child only
    assert _in_child(env) == (len(os.sched_getaffinity(0)),) * 2  # unpinned: every core it may use


@pytest.mark.parametrize("value, expected", [("1", 1), ("64", None), ("0", None), ("lots", None)])
def test_omp_num_threads_caps_the_threads_not_the_processes(value, expected):
    env = {**os.environ, "OMP_NUM_THREADS": value}
    available, threads = _in_child(env)
    assert available == cpus.available()
    assert threads == (expected if expected is not None else available)  # never more than the cores; junk ignored
