"""Read latency of the API for a running job with many stored trials, idle and while trials are recorded.

    python -m bench.service_latency                      # quick: SQLite, 2,000 trials, short phases
    python -m bench.service_latency --trials 10000 --databases sqlite postgres --requests 300 --bursts 5

For each database: a job in the ``running`` state gets ``--trials`` stored trials (bulk-inserted, then its
live front computed once, ``store.rebuild_live_front``); the API runs as `mixq serve` does
(``service.cli.uvicorn_config``, no local workers) in its own process.  Then, one request at a time in turn
over the read endpoints (``GET /v1/jobs/{id}``, ``/trials`` default page, ``/trials?sort=-quality&limit=200``,
the dashboard's last ``/trials?sort=number&limit=200&offset=...`` page, ``/pareto``, ``/v1/jobs``):

1. idle: nothing else runs;
2. busy: a writer process records one new trial every ``--writer-interval`` s through ``store.record_trial``
   (the worker's write path, which keeps the live front), as a worker finishing a trial a second would;
3. parallel: with the writer still running, ``--bursts`` bursts of ``--parallel`` requests at once, mixed
   over the same endpoints.

p50/p95/p99/max per endpoint and phase, the busy/idle ratio of each, the bursts' p50/p99 and every non-2xx
status are printed and written to ``bench/results/service_latency/<--name>.{md,json}``.  ``--api-tree DIR``
runs a second API (not the populate or the writer) from another checkout, e.g. ``/work/main`` for the code
before a change, on the same database: every request goes to both in turn, so the two see the same rows and
the same machine load (the other checkout must read this schema; it is not migrated).

PostgreSQL: ``--postgres-url`` names a server database to connect to (default ``test`` on 127.0.0.1:5432);
a scratch database is created beside it for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, make_url

from bench.report import markdown_table, result_path, setting_name, write_report
from service import store
from service.db import Database, upgrade
from service.models import Trial, utcnow
from service.store import TrialRecord

LAYERS = [f"features.{i}" for i in range(0, 9, 3)] + ["classifier.1", "classifier.3"]
BITS = {"int4": 4, "int8": 8, "fp16": 16, "w4a8": 6, "w8a16": 12}
JOB_SPEC: dict[str, Any] = {
    "workload": "digits", "workload_options": {"pretrain_steps": 100}, "profile": "generic",
    "formats": list(BITS), "pin_first_last": None, "pins": [], "cost_objectives": ["bitops"],
    "max_quality_drop": None, "n_trials": 1_000_000, "timeout_s": None, "qat_steps": 20, "seed": 0, "sampler": "tpe",
    "priority": 0, "model": None, "dataset": None, "seed_with_baselines": True, "seed_with_sensitivity": False,
    "reevaluate_front": 0,
}
WRITER_FIRST_NUMBER = 10_000_000  # the writer's trials are numbered apart from the stored ones
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def trial_record(number: int, rng: random.Random) -> TrialRecord:
    """A trial like a worker's: a map over 5 layers, a quality, BitOPs, a qconfig of about 1 KB."""
    assignment = {fqn: rng.choice(list(BITS)) for fqn in LAYERS}
    cost = float(sum(BITS[f] for f in assignment.values()) * 1e6)
    qconfig = {"schema_version": 2, "layers": {fqn: {"format": f, "scale": [round(rng.random(), 6)] * 8}
                                               for fqn, f in assignment.items()}}
    return TrialRecord(
        number=number, assignment=assignment, quality=round(0.9 + 0.07 * rng.random(), 6), quality_std=0.0,
        n_evaluations=1, costs={"bitops": cost}, primary_cost=cost, feasible=rng.random() > 0.05, duration_s=1.0,
        source="sampler", qconfig=qconfig,
    )


def populate(db: Database, n_trials: int) -> int:
    rng = random.Random(0)
    with db.session() as session:
        job_id = store.add_job(session, "local", JOB_SPEC, JOB_SPEC["n_trials"], 0, None).id
    with db.session() as session:
        store.claim_queued_job(session)
        store.set_job_info(session, job_id, "accuracy", True, 0.97, [{"fqn": f, "kind": "conv2d"} for f in LAYERS])
    for start in range(0, n_trials, 1000):
        rows = []
        for number in range(start, min(n_trials, start + 1000)):
            r = trial_record(number, rng)
            rows.append({"job_id": job_id, "number": number, "state": r.state, "assignment": r.assignment,
                         "quality": r.quality, "quality_std": r.quality_std, "n_evaluations": 1, "costs": r.costs,
                         "primary_cost": r.primary_cost, "feasible": r.feasible, "duration_s": r.duration_s,
                         "source": r.source, "qconfig": r.qconfig, "worker_id": "bench"})
        with db.session() as session:
            session.execute(insert(Trial), rows)
    with db.session() as session:
        store.rebuild_live_front(session, job_id)
        store.touch_job(session, job_id)
    return job_id


def writer(url: str, job_id: int, interval_s: float) -> None:
    """Record one trial every ``interval_s`` until SIGTERM (``--writer``)."""
    stop = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    db = Database(url)
    rng = random.Random(1)
    number = WRITER_FIRST_NUMBER
    while not stop:
        started = time.monotonic()
        with db.session() as session:
            store.record_trial(session, job_id, trial_record(number, rng), "bench-writer", True)
        number += 1
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    db.dispose()


@contextmanager
def scratch_database(kind: str, postgres_url: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    import psycopg

    server = make_url(postgres_url)
    admin = f"host={server.host or '127.0.0.1'} port={server.port or 5432} user={server.username or 'postgres'} " \
            f"dbname={server.database or 'postgres'}"
    name = f"mixq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


API = ("from service.cli import _Server, uvicorn_config; from service.main import create_app; "
       "from service.settings import Settings; s = Settings(); _Server(uvicorn_config(s, create_app(s))).run()")


def start_api(url: str, tmp: Path, api_tree: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_DATA_DIR": str(tmp), "MIXQ_PORT": str(port),
           "MIXQ_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
           # the load comes from one address: the per-client cap (32 by default) would answer the bursts 429
           "MIXQ_MAX_REQUESTS_PER_CLIENT": "1000"}
    if api_tree is not None:
        env["PYTHONPATH"] = str(api_tree)
    proc = subprocess.Popen([sys.executable, "-c", API], env=env, cwd=api_tree or Path.cwd(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"API did not start: {(proc.stderr.read() if proc.stderr else b'').decode()[-2000:]}")
        time.sleep(0.2)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def endpoints(job_id: int, n_trials: int) -> dict[str, str]:
    last_page = max(0, (n_trials - 1) // 200 * 200)
    return {
        "job": f"/v1/jobs/{job_id}",
        "trials": f"/v1/jobs/{job_id}/trials",
        "trials -quality 200": f"/v1/jobs/{job_id}/trials?sort=-quality&limit=200",
        "trials last page": f"/v1/jobs/{job_id}/trials?sort=number&limit=200&offset={last_page}",
        "pareto": f"/v1/jobs/{job_id}/pareto",
        "jobs": "/v1/jobs",
    }


Timings = dict[str, dict[str, list[float]]]  # api -> endpoint -> ms


async def sequential(bases: dict[str, str], paths: dict[str, str], rounds: int,
                     statuses: dict[int, int]) -> Timings:
    """``rounds`` x each endpoint, one request at a time, the endpoints in turn and, for each, the APIs in
    turn (this tree's, then ``--api-tree``'s): both see the same machine load and the same rows."""
    timings: Timings = {api: {name: [] for name in paths} for api in bases}
    async with httpx.AsyncClient(timeout=60) as client:
        for base in bases.values():
            for path in paths.values():  # warm-up (the first /pareto builds the API's view)
                (await client.get(base + path)).raise_for_status()
        for _ in range(rounds):
            for name, path in paths.items():
                for api, base in bases.items():
                    started = time.perf_counter()
                    r = await client.get(base + path)
                    await r.aread()
                    timings[api][name].append((time.perf_counter() - started) * 1e3)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    return timings


async def bursts(bases: dict[str, str], paths: dict[str, str], n_bursts: int, parallel: int,
                 statuses: dict[int, int]) -> dict[str, list[float]]:
    """``n_bursts`` x ``parallel`` requests sent at once, round-robin over the endpoints; the APIs' bursts
    alternate."""
    timings: dict[str, list[float]] = {api: [] for api in bases}
    order = list(paths.values())
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(api: str, url: str) -> None:
            started = time.perf_counter()
            r = await client.get(url)
            await r.aread()
            timings[api].append((time.perf_counter() - started) * 1e3)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        for b in range(n_bursts):
            for api, base in bases.items():
                await asyncio.gather(*(one(api, base + order[(b + i) % len(order)]) for i in range(parallel)))
                await asyncio.sleep(0.5)
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1)}


def complete_count(db: Database, job_id: int) -> int:
    with db.session() as session:
        return store.trial_counts(session, [job_id], utcnow())[job_id].complete


def run_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mixq-bench-"))
    with scratch_database(kind, args.postgres_url, tmp) as url:
        upgrade(url)
        db = Database(url)
        t0 = time.perf_counter()
        job_id = populate(db, args.trials)
        populate_s = time.perf_counter() - t0
        paths = endpoints(job_id, args.trials)
        procs: list[subprocess.Popen[bytes]] = []
        statuses: dict[str, dict[int, int]] = {"idle": {}, "busy": {}, "parallel": {}}
        try:
            bases: dict[str, str] = {}
            for api, tree in [("this", None), *([("before", args.api_tree)] if args.api_tree else [])]:
                proc, bases[api] = start_api(url, tmp, tree)
                procs.append(proc)
            sizes = {name: len(httpx.get(bases["this"] + path, timeout=60).content) for name, path in paths.items()}
            idle = asyncio.run(sequential(bases, paths, args.requests, statuses["idle"]))
            env = {**os.environ, "MIXQ_DATABASE_URL": url, "OMP_NUM_THREADS": "1"}
            before = complete_count(db, job_id)
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.service_latency", "--writer", url,
                                           str(job_id), str(args.writer_interval)], env=env))
            deadline = time.monotonic() + 120
            while complete_count(db, job_id) == before:  # the writer is recording
                if time.monotonic() > deadline:
                    raise SystemExit("the writer did not record a trial")
                time.sleep(0.2)
            busy_started, before = time.monotonic(), complete_count(db, job_id)
            busy = asyncio.run(sequential(bases, paths, args.requests, statuses["busy"]))
            burst = asyncio.run(bursts(bases, paths, args.bursts, args.parallel, statuses["parallel"]))
            busy_s = time.monotonic() - busy_started
            after = complete_count(db, job_id)
        finally:
            stop(procs)
            db.dispose()
    apis: dict[str, Any] = {}
    for api in bases:
        apis[api] = {
            "idle": {name: stats(ms) for name, ms in idle[api].items()},
            "busy": {name: stats(ms) for name, ms in busy[api].items()},
            "busy_over_idle_p99": {
                name: round(stats(busy[api][name])["p99_ms"] / max(0.1, stats(idle[api][name])["p99_ms"]), 2)
                for name in paths
            },
            "parallel": {"parallel": args.parallel, "bursts": args.bursts, **stats(burst[api])},
        }
    return {
        "database": kind, "stored_trials": args.trials, "populate_s": round(populate_s, 1),
        "trials_recorded_while_busy": after - before, "busy_s": round(busy_s, 1),
        "writer_interval_s": args.writer_interval, "response_bytes": sizes, "apis": apis,
        "statuses": {phase: {str(k): v for k, v in sorted(s.items())} for phase, s in statuses.items()},
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    parts = []
    for r in results:
        this = r["apis"]["this"]
        before = r["apis"].get("before")
        header = ["endpoint", "bytes", "idle p50 ms", "idle p99 ms", "busy p50 ms", "busy p99 ms", "busy max ms",
                  "busy/idle p99"]
        if before:
            header += ["before: busy p50 ms", "before: busy p99 ms", "before/this busy p99"]
        rows = []
        for name in this["idle"]:
            row: list[object] = [name, r["response_bytes"][name], this["idle"][name]["p50_ms"],
                                 this["idle"][name]["p99_ms"], this["busy"][name]["p50_ms"],
                                 this["busy"][name]["p99_ms"], this["busy"][name]["max_ms"],
                                 this["busy_over_idle_p99"][name]]
            if before:
                row += [before["busy"][name]["p50_ms"], before["busy"][name]["p99_ms"],
                        round(before["busy"][name]["p99_ms"] / max(0.1, this["busy"][name]["p99_ms"]), 1)]
            rows.append(row)
        non_2xx = {phase: {k: v for k, v in s.items() if not k.startswith("2")} for phase, s in r["statuses"].items()}
        parts += [
            f"## {r['database']}: {r['stored_trials']} stored trials, running job",
            "",
            f"{args.requests} requests per endpoint, API and phase, one at a time"
            + (f" (this tree's API and `{args.api_tree}`'s, alternating)" if before else "")
            + f"; busy: a writer recording one trial every {r['writer_interval_s']} s "
            f"({r['trials_recorded_while_busy']} recorded in the {r['busy_s']} s of the busy and parallel phases).",
            "",
            markdown_table(header, rows),
            "",
        ]
        for api, label in [("this", "this tree"), ("before", f"`{args.api_tree}`")]:
            if api in r["apis"]:
                p = r["apis"][api]["parallel"]
                parts += [f"{p['bursts']} bursts of {p['parallel']} parallel mixed requests (busy), {label}: "
                          f"p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms "
                          f"over {p['n']} requests.", ""]
        parts += [f"Statuses other than 2xx (both APIs): {json.dumps(non_2xx)}.", ""]
    return "\n".join(parts)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000, help="stored trials (the issue's size: 10000)")
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    parser.add_argument("--postgres-url", default=DEFAULT_PG, help="a database on the server; a scratch one is made")
    parser.add_argument("--requests", type=int, default=60, help="per endpoint and phase")
    parser.add_argument("--parallel", type=int, default=100, help="requests per burst")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--writer-interval", type=float, default=1.0, help="seconds between the writer's trials")
    parser.add_argument("--api-tree", type=Path, default=None, help="run the API from this checkout")
    parser.add_argument("--name", type=setting_name, default=None,
                        help="results setting (default <databases>_<trials>)")
    args = parser.parse_args()
    results = [run_database(kind, args) for kind in args.databases]
    name = args.name or f"{'+'.join(args.databases)}_{args.trials}"
    result_path("service_latency", name, ".json").write_text(json.dumps(
        {"command": sys.argv, "api_tree": str(args.api_tree) if args.api_tree else None, "results": results},
        indent=2) + "\n")
    title = f"API read latency, {args.trials} trials in a running job"
    write_report("service_latency", name, title, report(results, args))


if __name__ == "__main__":
    main()
