"""How many threads torch uses in a mixq process: chosen and said, not inherited.

torch's default (one thread per core) is wrong when several processes share the cores: on a busy
2-core machine 50 QAT steps took 25.4 s with torch's default and 3.8 s with one thread (issue 12).
So each process takes its share: usable cores / processes on this machine, at least 1, unless
``MIXQ_TORCH_THREADS`` (or a command-line option) says otherwise.

The machine's load does not enter: a trial's numbers follow the thread count (the order of float sums),
so a count chosen from the load average made the same command give a different front on a busy
machine (issue 20).  The count is fixed for a whole search (``SearchSpec.torch_threads``, recorded in
its result); a busy machine makes a search slower, never different.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "MIXQ_TORCH_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_torch_threads(processes: int = 1, override: int | None = None) -> tuple[int, str]:
    """(threads, why): ``override``, else ``$MIXQ_TORCH_THREADS``, else ``$OMP_NUM_THREADS``, else usable
    cores / ``processes`` (never the load: see the module's docstring)."""
    if override is not None:
        if override < 1:
            raise ValueError(f"torch_threads: must be >= 1, got {override}")
        return override, "as asked"
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV}: must be a whole number >= 1, got {text!r}")
        return int(text), f"from {THREADS_ENV}"
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:  # the usual way to say it for any torch program: respected
        return int(omp), "from OMP_NUM_THREADS"
    cores = usable_cores()
    processes = max(1, processes)
    share = max(1, cores // processes)
    return share, f"{cores} usable core(s) / {processes} process(es) on this machine"


def set_torch_threads(processes: int = 1, override: int | None = None) -> str:
    """Set torch's intra-op thread count as :func:`choose_torch_threads` decides; returns the one
    line that says what was chosen and why."""
    threads, why = choose_torch_threads(processes, override)
    torch.set_num_threads(threads)
    return f"torch threads: {threads} ({why}; set {THREADS_ENV} to change)"


__all__ = ["THREADS_ENV", "choose_torch_threads", "set_torch_threads", "usable_cores"]
