"""A job of an uploaded model runs in a child process under resource limits, never in the worker itself.

The worker (:class:`service.worker.Worker`) starts ``python -m service.jobchild JOB_ID WORKER_ID`` for a job
whose model and dataset are uploads, and keeps heartbeating for it.  The child imports what it needs
(torch, the search), then drops into limits before it reads the upload: address space (RLIMIT_AS, a budget
above what the imports already mapped, ``MIXQ_UPLOAD_JOB_MEMORY_BYTES``), CPU time (RLIMIT_CPU,
``MIXQ_UPLOAD_JOB_CPU_S``), file size (RLIMIT_FSIZE, ``MIXQ_UPLOAD_JOB_FILE_BYTES``; not with an SQLite
database, whose file the child writes) and no core files.  It then runs the job like any worker (trials,
progress and the final report go to the database).  A child killed by a limit, or one that exits without
finishing the job, fails the job with a message naming the limit; the worker goes on with the next job.

The parent reads the child's peak resident memory from ``wait4`` (:attr:`ChildRun.max_rss_bytes`).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from service.settings import Settings

log = logging.getLogger("mixq.worker")

_SETTINGS_ENV = "MIXQ_JOB_CHILD_SETTINGS"
_POLL_S = 0.2


@dataclass(frozen=True)
class ChildRun:
    returncode: int  # negative: killed by that signal
    max_rss_bytes: int  # the child's peak resident set (ru_maxrss)

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def limits_text(settings: Settings) -> str:
    return (f"{settings.upload_job_memory_bytes // 2**20} MiB of memory (MIXQ_UPLOAD_JOB_MEMORY_BYTES), "
            f"{settings.upload_job_cpu_s} s of CPU (MIXQ_UPLOAD_JOB_CPU_S)")


def run_job_in_child(settings: Settings, job_id: int, worker_id: str, stop: threading.Event) -> ChildRun:
    """Run job ``job_id`` in a limited child; returns once it exits (``stop`` set: the child is asked to stop
    after its current trial, as the worker itself would)."""
    import torch

    env = {
        **os.environ, _SETTINGS_ENV: settings.model_copy(
            update={"database_url": settings.resolved_database_url}).model_dump_json(),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        # glibc gives each thread a 64 MiB malloc arena of address space: under RLIMIT_AS that is budget lost
        "MALLOC_ARENA_MAX": "2",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service.jobchild", str(job_id), worker_id], env=env)
    asked_to_stop = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
            return ChildRun(proc.returncode, int(usage.ru_maxrss) * 1024)  # Linux: kilobytes
        if stop.is_set() and not asked_to_stop:
            proc.send_signal(signal.SIGTERM)
            asked_to_stop = True
        time.sleep(_POLL_S)


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def enter_limits(settings: Settings, sqlite: bool) -> None:
    budget = _mapped_bytes() + settings.upload_job_memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    # RLIMIT_CPU counts from the process's start: the imports' CPU time is added, so the job gets its own.
    # The soft limit sends SIGXCPU (the default action ends the process); the hard one, 5 s later, SIGKILL
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(usage.ru_utime + usage.ru_stime) + 1 + settings.upload_job_cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sqlite:
        limit = settings.upload_job_file_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def main(job_id: int, worker_id: str) -> int:
    import torch

    import search  # noqa: F401 - imported before the limits (the search loop and its libraries): their mappings are not the job's
    from service.db import Database
    from service.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(os.environ[_SETTINGS_ENV])
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    db = Database(settings.resolved_database_url)
    worker = Worker(db, settings, worker_id=worker_id, isolate_uploads=False)
    worker.memory_note = (f"a job of an uploaded model runs within {limits_text(settings)}: reduce "
                          "workload_options.batch_size or the dataset")

    def _stop(_signum: int, _frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    db.ping()  # the connection pool's first connection before the limits
    enter_limits(settings, db.url.startswith("sqlite"))
    try:
        worker.run_job(job_id)
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m service.jobchild JOB_ID WORKER_ID")
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
