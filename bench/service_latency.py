"""p50/p95/p99 latency of ``GET /v1/jobs/{id}/pareto`` and ``GET /v1/jobs/{id}/trials?limit=50`` for a job
holding 10,000 stored trials while two ``mixq worker`` processes add trials to that same job.

    python bench/service_latency.py [--database-url URL] [--requests 400] [--concurrency 4] [--out FILE]

Default database: a fresh SQLite file in a temp folder.  The API runs under uvicorn in its own process on
loopback; the load generator is asyncio + httpx with a bounded request count and time.  Prints a JSON
summary (and writes it to --out; the recorded runs are ``bench/results/service_latency/<database>_c<concurrency>.json``,
e.g. ``--out bench/results/service_latency/sqlite_c4.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import write_json_summary
from service import store
from service.db import Database, upgrade
from service.store import TrialRecord

STORED_TRIALS = 10_000
FIRST_NUMBER = 1_000_000  # stored trials are numbered apart from the ones the workers add
LAYERS = [f"features.{i}" for i in range(0, 9, 3)] + ["classifier.1", "classifier.3"]
JOB_SPEC: dict[str, Any] = {
    "workload": "digits", "workload_options": {"pretrain_steps": 100}, "profile": "generic",
    "formats": ["int4", "int8", "fp16"], "pin_first_last": "int8", "pins": [], "cost_objectives": ["bitops"],
    "max_quality_drop": None, "n_trials": 20_000, "timeout_s": None, "qat_steps": 100, "seed": 0, "sampler": "tpe",
    "priority": 0, "model": None, "dataset": None, "seed_with_baselines": True, "seed_with_sensitivity": False,
    "reevaluate_front": 0,
}


def populate(db: Database) -> int:
    rng = random.Random(0)
    with db.session() as session:
        job = store.add_job(session, "local", JOB_SPEC, JOB_SPEC["n_trials"], 0, None)
        job_id = job.id
        store.set_job_info(session, job_id, "accuracy", True, 0.97)
    bits = {"int4": 4, "int8": 8, "fp16": 16}
    batch = 500
    for start in range(0, STORED_TRIALS, batch):
        with db.session() as session:
            for number in range(FIRST_NUMBER + start, FIRST_NUMBER + start + batch):
                assignment = {fqn: rng.choice(list(bits)) for fqn in LAYERS}
                cost = float(sum(bits[f] for f in assignment.values()) * 1e6)
                store.record_trial(session, job_id, TrialRecord(
                    number=number, assignment=assignment, quality=0.9 + 0.07 * rng.random(), quality_std=0.0,
                    n_evaluations=1, costs={"bitops": cost}, primary_cost=cost, feasible=True, duration_s=1.0,
                    source="sampler", qconfig=None,
                ), "bench", True)
    return job_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def load(base: str, paths: list[str], requests: int, concurrency: int, max_s: float) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {p: [] for p in paths}
    deadline = time.monotonic() + max_s
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for path in paths:  # warm-up
            (await client.get(path)).raise_for_status()

        async def one(path: str, count: int) -> None:
            for _ in range(count):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                r = await client.get(path)
                await r.aread()
                elapsed_ms = (time.perf_counter() - started) * 1e3
                r.raise_for_status()
                timings[path].append(elapsed_ms)

        per_task = max(1, requests // concurrency)
        await asyncio.gather(*(one(p, per_task) for p in paths for _ in range(concurrency)))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--requests", type=int, default=400, help="per endpoint")
    parser.add_argument("--concurrency", type=int, default=4, help="in-flight requests per endpoint")
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mixq-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    upgrade(url)
    db = Database(url)
    t0 = time.perf_counter()
    job_id = populate(db)
    populate_s = time.perf_counter() - t0

    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_DATA_DIR": str(tmp), "OMP_NUM_THREADS": "1",
           "MIXQ_CACHE_DIR": str(tmp / "cache")}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--host",
                               "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)]
    procs += [subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.workers)]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("API did not start")
            time.sleep(0.2)
        # wait until the workers are adding trials to the job
        deadline = time.monotonic() + 180
        while httpx.get(f"{base}/v1/jobs/{job_id}").json()["counts"]["complete"] <= STORED_TRIALS + 1:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not start adding trials")
            time.sleep(0.5)
        before = httpx.get(f"{base}/v1/jobs/{job_id}").json()["counts"]["complete"]
        paths = [f"/v1/jobs/{job_id}/pareto", f"/v1/jobs/{job_id}/trials?limit=50"]
        started = time.monotonic()
        timings = asyncio.run(load(base, paths, args.requests, args.concurrency, args.max_seconds))
        load_s = time.monotonic() - started
        after = httpx.get(f"{base}/v1/jobs/{job_id}").json()["counts"]["complete"]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        db.dispose()

    summary: dict[str, Any] = {
        "database": url.split(":", 1)[0], "stored_trials": STORED_TRIALS, "workers": args.workers,
        "concurrency_per_endpoint": args.concurrency, "populate_s": round(populate_s, 1), "load_s": round(load_s, 1),
        "trials_added_during_load": after - before, "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "endpoints": {
            path.split("?")[0].rsplit("/", 1)[-1] + ("?limit=50" if "?" in path else ""): {
                "n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 95), 1),
                "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1),
            }
            for path, ms in timings.items()
        },
    }
    write_json_summary(summary, args.out)


if __name__ == "__main__":
    main()
