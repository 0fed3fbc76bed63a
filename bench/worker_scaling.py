"""Trials per hour on the digits workload with 1 and with 2 ``mixq worker`` processes on one job.

    python bench/worker_scaling.py [--trials 30] [--qat-steps 200] [--database-url URL] [--out FILE]

Each run: a fresh job, N worker processes (one torch thread each, OMP_NUM_THREADS=1), timed from the
first stored trial to the last (steady state: process start-up and the fp32 baseline excluded) and also
end to end.  Prints a JSON summary (and writes it to --out; the recorded run is
``bench/results/worker_scaling/<database>.json``, e.g. ``--out bench/results/worker_scaling/sqlite.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.report import write_json_summary
from service import store
from service.db import Database, upgrade
from service.models import JobStatus, Trial


def run(url: str, n_workers: int, trials: int, qat_steps: int, cache: Path) -> dict[str, Any]:
    db = Database(url)
    spec: dict[str, Any] = {
        # 5 formats on 5 free layers: 3125 assignments, so few proposals repeat (repeats are served from the
        # study's cache and would flatter whichever run has more of them)
        "workload": "digits", "workload_options": {}, "profile": "generic",
        "formats": ["int4", "int8", "fp16", "w4a8", "w8a16"], "pin_first_last": None, "pins": [],
        "cost_objectives": ["bitops"], "max_quality_drop": None,
        "n_trials": trials, "timeout_s": None, "qat_steps": qat_steps, "seed": n_workers, "sampler": "tpe",
        "priority": 0, "model": None, "dataset": None, "seed_with_baselines": True,
        "seed_with_sensitivity": False, "reevaluate_front": 0,
    }
    with db.session() as session:
        job_id = store.add_job(session, "local", spec, trials, 0, None).id
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "OMP_NUM_THREADS": "1", "MIXQ_CACHE_DIR": str(cache),
           "MIXQ_POLL_INTERVAL_S": "0.2"}
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n_workers)]
    try:
        while True:
            with db.session() as session:
                status = store.job_status(session, job_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                break
            time.sleep(0.5)
        wall_s = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
    with db.session() as session:
        first, last, count, workers = session.execute(
            select(func.min(Trial.created_at), func.max(Trial.created_at), func.count(),
                   func.count(Trial.worker_id.distinct())).where(Trial.job_id == job_id)
        ).one()
    db.dispose()
    steady_s = (last - first).total_seconds()
    return {
        "workers": n_workers, "status": str(status), "trials": count, "workers_that_ran_trials": workers,
        "wall_s": round(wall_s, 1), "steady_s": round(steady_s, 1),
        "trials_per_hour_steady": round((count - 1) / steady_s * 3600) if steady_s > 0 else None,
        "trials_per_hour_wall": round(count / wall_s * 3600),
    }


_SPIN = "import time\nt = time.monotonic(); n = 0\nwhile time.monotonic() - t < {s}:\n    n += 1\nprint(n)"


def available_parallelism(seconds: float = 5.0) -> float:
    """How much faster two busy-looping processes get through work than one, right now: on a machine
    shared with other jobs this, not the core count, bounds what a second worker can add."""
    code = _SPIN.format(s=seconds)
    one = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    two = sum(int(p.communicate()[0]) for p in procs)
    return round(two / one, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--qat-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mixq-scaling-"))
    url = args.database_url or f"sqlite:///{tmp / 'scaling.db'}"
    upgrade(url)
    cache = tmp / "cache"
    parallelism_before = available_parallelism()
    runs = [run(url, n, args.trials, args.qat_steps, cache) for n in (1, 2)]
    parallelism_after = available_parallelism()
    one, two = runs
    summary = {
        "workload": "digits", "qat_steps": args.qat_steps, "database": url.split(":", 1)[0],
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "two_process_cpu_parallelism_before_after": [parallelism_before, parallelism_after], "runs": runs,
        "speedup_steady": round(two["trials_per_hour_steady"] / one["trials_per_hour_steady"], 2)
        if one["trials_per_hour_steady"] and two["trials_per_hour_steady"] else None,
        "speedup_wall": round(two["trials_per_hour_wall"] / one["trials_per_hour_wall"], 2),
    }
    write_json_summary(summary, args.out)


if __name__ == "__main__":
    main()
