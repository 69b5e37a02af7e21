"""How many cores stagebook's own parallel work may use: the ones this process may run on, not the machine's.

`os.cpu_count()` counts the machine. A job pinned by `taskset`, a container with a cpuset or a Slurm allocation
gets fewer, and a team that shares a node says so with `OMP_NUM_THREADS`. Asking for more threads than there are
cores is worse than slow: torch's and faiss's OpenMP threads spin while they wait for each other.
"""
from __future__ import annotations

import os


def available() -> int:
    "Cores this process may run on (its CPU affinity): how many processes to run side by side."
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def threads() -> int:
    "Threads for one process's numeric work (torch, faiss): `OMP_NUM_THREADS` when it is set, else `available()`."
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        asked = 0
    return max(1, min(asked, available())) if asked > 0 else available()
