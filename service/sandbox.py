"""Upload inspection in a short-lived child process, never in the API process.

The child (``python -m service.sandbox TASK``, upload bytes on stdin, one JSON object on stdout) imports
what it needs, then drops into limits before it reads a byte of the upload: address space (RLIMIT_AS,
a budget above what the imports already mapped), CPU time (RLIMIT_CPU), file writes (RLIMIT_FSIZE 0,
no core files) and, as root where the kernel allows, a new network namespace with no interface up.
A crash, a limit hit or a timeout in the child is an :class:`~service.uploads.UploadError` (a 422) in
the parent.  The parsers themselves never evaluate anything (see ``search.quant.onnx_import`` and
``service.uploads``); this is the second wall.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

TASKS = ("model", "dataset", "probe")
_CLONE_NEWNET = 0x40000000  # linux/sched.h; os.unshare only exists from Python 3.12


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 2 * 1024**3  # address space the inspection may map beyond the child's imports
    cpu_s: int = 60
    wall_s: float = 120.0  # the child is killed after this, whatever it is doing


class SandboxFailure(Exception):
    """The child did not answer: crashed, killed by a limit, or timed out.  The message says which."""


def run_sandboxed(task: str, data: bytes, limits: SandboxLimits | None = None) -> dict[str, Any]:
    """The child's JSON answer for ``task`` on ``data``; raises SandboxFailure."""
    if task not in TASKS:
        raise ValueError(f"task: one of {TASKS}")
    limits = limits or SandboxLimits()
    # nothing of the API's environment (MIXQ_DATABASE_URL and its password, tokens, proxies): only what
    # Python needs to find mixq, and an empty scratch directory as the working directory
    env = {
        "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p),
        "MIXQ_SANDBOX_MEMORY_BYTES": str(limits.memory_bytes), "MIXQ_SANDBOX_CPU_S": str(limits.cpu_s),
        "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONNOUSERSITE": "1",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="mixq-sandbox-") as scratch:
            env["HOME"] = env["TMPDIR"] = scratch
            done = subprocess.run(
                [sys.executable, "-m", "service.inspect_child", task], input=data, capture_output=True, env=env,
                timeout=limits.wall_s, check=False, cwd=scratch,
            )
    except subprocess.TimeoutExpired:
        raise SandboxFailure(f"inspection took longer than {limits.wall_s:g} s") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise SandboxFailure(f"inspection was killed by {name} (limits: {limits.memory_bytes // 2**20} MiB, "
                             f"{limits.cpu_s} s CPU)")
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise SandboxFailure(f"inspection failed (exit status {done.returncode})") from None
    if not isinstance(answer, dict):
        raise SandboxFailure("inspection gave no answer")
    return answer


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def isolate_network() -> bool:
    """A new, empty network namespace (root only); False where the platform does not allow it."""
    if os.geteuid() != 0:
        return False
    unshare = getattr(os, "unshare", None)
    if unshare is not None:
        try:
            unshare(_CLONE_NEWNET)
            return True
        except OSError:
            return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.unshare(_CLONE_NEWNET) == 0)
    except (OSError, AttributeError):
        return False


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def enter_limits(memory_bytes: int, cpu_s: int) -> None:
    budget = _mapped_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def probe() -> dict[str, Any]:
    """What the child can do, for tests: the limits in force and whether a local TCP port is reachable."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            reachable = True
    except OSError:
        reachable = False
    return {
        "environment": sorted(os.environ), "cwd": os.getcwd(), "cwd_entries": len(os.listdir(".")),
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
        "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
        "rlimit_fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0], "tcp_5432_reachable": reachable,
    }
