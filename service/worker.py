"""The worker loop: claim a queued job (or join a running one), run its trials through the job's Optuna
study, record every trial, and move the job to its final state.

Several workers may run one job: they call ``run_search`` with the same storage and study name, and the
study shares out the budget.  A worker that dies mid-trial loses that trial only (the study retries it
once its heartbeat is stale); the job stays ``running`` and any worker (a new one, or one that finishes
elsewhere) joins it.  Cancel is seen by ``should_stop`` between trials.

``run_search`` and ``make_workload`` are parameters (the seam tests use, as httpx's MockTransport);
production passes ``search.run_search`` and :func:`workload_for_job`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import tenacity
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session

from search import (
    SearchObserver,
    SearchProgress,
    SearchResult,
    SearchSpec,
    StorageError,
    TargetProfile,
    TrialFailure,
    TrialOutcome,
    Workload,
    json_safe,
    load_workload,
)
from service import store
from service.artefacts import front_artefacts, remove_trial_weights, trial_weights_dir
from service.db import Database
from service.jobchild import ChildRun, limits_text, run_job_in_child
from service.models import Job, JobStatus, UploadKind, utcnow
from service.schemas import FLOAT_LAYER_MARK, JobCreate, job_spec
from service.settings import Settings
from service.store import ArtefactRecord, TrialRecord
from service.uploads import build_workload

log = logging.getLogger("mixq.worker")

WRITE_RETRIES = 5  # a trial write survives this many dropped connections in a row
WRITE_BACKOFF_S = 0.5


class RunSearch(Protocol):
    def __call__(
        self, spec: SearchSpec, *, workload: Workload | None = None, profile: TargetProfile | None = None,
        observer: SearchObserver | None = None,
    ) -> SearchResult: ...


MakeWorkload = Callable[[Database, Job, Settings], Workload]


def _default_run_search() -> RunSearch:
    from search import run_search

    return run_search


def is_transient(exc: BaseException) -> bool:
    """A lost/unreachable database (ours or Optuna's), anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | DisconnectionError) or (
            isinstance(current, DBAPIError) and current.connection_invalidated
        ):
            return True
        if isinstance(current, StorageError):  # Optuna's storage could not be opened (the run_search seam)
            return True
        text = str(current)
        if isinstance(current, DBAPIError) and ("already exists" in text or "alembic_version" in text):
            return True  # two processes creating Optuna's tables in a new database at once; the loser retries
        current = current.__cause__ or current.__context__
    return False


def workload_for_job(db: Database, job: Job, settings: Settings) -> Workload:
    """Built-in or allow-listed entry-point workload, or one built from the owner's uploads."""
    spec = job_spec(job.spec)
    if spec.model is not None:
        with db.session() as session:
            model = store.get_upload(session, job.owner, UploadKind.MODEL, spec.model)
            dataset = store.get_upload(session, job.owner, UploadKind.DATASET, spec.dataset or "")
            if model is None or dataset is None:
                raise ValueError("model/dataset: the job's uploads no longer exist")
            model_bytes = store.upload_bytes(session, model.id)
            dataset_bytes = store.upload_bytes(session, dataset.id)
        return build_workload(spec.workload, model_bytes, dataset_bytes, spec.workload_options)
    if ":" in spec.workload and spec.workload not in settings.allowed_workloads:
        raise ValueError(f"workload: entry point {spec.workload!r} is not allow-listed (MIXQ_ALLOWED_WORKLOADS)")
    return load_workload(spec.workload, spec.workload_options)


def study_name(job_id: int) -> str:
    """The job's Optuna study (a job id is never reused, see ``models.Job``)."""
    return f"mixq-job-{job_id}"


@dataclass
class _JobRun:
    job_id: int
    owner: str
    spec: JobCreate
    cost_objective: str
    higher_is_better: bool | None = None
    workload: Workload | None = None  # the front's weights and ONNX are made with it at the end


class _JobObserver(SearchObserver):
    """What the worker does as its job's search runs: store each trial, failure and progress report,
    and stop when the job is cancelled or the worker shuts down."""

    def __init__(self, worker: Worker, run: _JobRun) -> None:
        self.worker, self.run = worker, run

    def started(self, result: SearchResult) -> None:
        self.worker._on_start(self.run, result)

    def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
        self.worker._on_trial(self.run, outcome, progress)

    def trial_failed(self, failure: TrialFailure) -> None:
        self.worker._on_failed_trial(self.run, failure)

    def progress(self, progress: SearchProgress) -> None:
        self.worker._on_progress(self.run, progress)

    def should_stop(self) -> bool:
        return self.worker._should_stop(self.run.job_id)


class Worker:
    def __init__(
        self, db: Database, settings: Settings, *, run_search: RunSearch | None = None,
        make_workload: MakeWorkload = workload_for_job, worker_id: str | None = None,
        isolate_uploads: bool | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.run_search = run_search or _default_run_search()
        self.make_workload = make_workload
        self.id = worker_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self.current_job: int | None = None
        self._heartbeat_thread: threading.Thread | None = None
        # a job of an uploaded model runs in a limited child process (service.jobchild); the seams tests
        # replace run in-process
        self.isolate_uploads = make_workload is workload_for_job if isolate_uploads is None else isolate_uploads
        self.last_child: ChildRun | None = None
        self.memory_note: str | None = None  # a job child's limits, added to an allocation failure's message

    # -- lifecycle ---------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        with self.db.session() as session:
            store.register_worker(session, self.id, socket.gethostname()[:255], os.getpid())
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="mixq-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.settings.heartbeat_interval_s):
            self.beat()

    def beat(self) -> None:
        try:
            with self.db.session() as session:
                store.heartbeat(session, self.id, self.current_job)
        except Exception as exc:  # noqa: BLE001 - a missed beat is logged; the next one retries
            log.warning("worker %s: heartbeat failed: %s", self.id, exc)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        try:
            with self.db.session() as session:
                store.unregister_worker(session, self.id)
        except Exception as exc:  # noqa: BLE001 - shutting down; a stale row just ages out
            log.warning("worker %s: could not unregister: %s", self.id, exc)

    def run_forever(self, max_jobs: int | None = None) -> None:
        """Work until ``stop()`` (or ``max_jobs`` job runs)."""
        self.start_heartbeat()
        runs = 0
        try:
            while not self.stop_event.is_set() and (max_jobs is None or runs < max_jobs):
                job_id = self.next_job()
                if job_id is None:
                    self.stop_event.wait(self.settings.poll_interval_s)
                    continue
                self.run_job(job_id)
                runs += 1
        finally:
            self.close()

    # -- picking work ------------------------------------------------------------------------
    def stale_before(self) -> datetime:
        return utcnow() - timedelta(seconds=self.settings.stale_after_s)

    def next_job(self) -> int | None:
        """Claim a queued job, else join a running one with budget left; None if there is nothing."""
        try:
            with self.db.session() as session:
                job_id = store.claim_queued_job(session)
                if job_id is None:
                    job_id = store.running_job_to_join(session, self.stale_before())
                if job_id is not None:
                    store.heartbeat(session, self.id, job_id)
                return job_id
        except Exception as exc:  # noqa: BLE001 - DB away: try again after the poll interval
            log.warning("worker %s: cannot look for work: %s", self.id, exc)
            return None

    # -- one job -----------------------------------------------------------------------------
    def run_job(self, job_id: int) -> None:
        """One unit of work; its single broad ``except`` records the failure on the job."""
        self.current_job = job_id
        try:
            self._run_job(job_id)
        except Exception as exc:  # the failure boundary of a job run
            if is_transient(exc):
                log.warning("worker %s: job %d interrupted by the database (%s); will rejoin", self.id, job_id, exc)
                self.stop_event.wait(self.settings.poll_interval_s)
            else:
                log.exception("worker %s: job %d failed", self.id, job_id)
                error = f"{type(exc).__name__}: {exc}"
                if self.memory_note and (isinstance(exc, MemoryError) or "allocate" in str(exc)):
                    error = f"{error[:2000]} ({self.memory_note})"
                self._write(lambda s: store.transition(s, job_id, JobStatus.FAILED, error))
                self._drop_weights_of_ended_job(job_id)
        finally:
            self.current_job = None
            self.beat()

    def _run_job(self, job_id: int) -> None:
        with self.db.session() as session:
            job = store.get_job(session, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return
            session.expunge(job)
        spec = job_spec(job.spec)
        if spec.model is not None and self.isolate_uploads:
            self._run_job_in_child(job_id)
            return
        run = _JobRun(job_id, job.owner, spec, str(spec.cost_objectives[0]))
        workload = self.make_workload(self.db, job, self.settings)
        run.higher_is_better, run.workload = workload.higher_is_better, workload
        self._write(lambda s: store.set_job_info(s, job_id, workload.metric, workload.higher_is_better, None))
        result = self.run_search(
            SearchSpec.of(spec, storage=self.db.url, study_name=study_name(job_id),
                          weights_dir=self._weights_dir(job_id)), workload=workload,
            profile=self._profile(job.owner, spec.profile), observer=_JobObserver(self, run),
        )
        if self.stop_event.is_set() or self._status(job_id) != JobStatus.RUNNING:
            self._drop_weights_of_ended_job(job_id)
            return  # shutting down, cancelled or deleted: the study keeps what was done
        self._finalize(run, result)

    def _run_job_in_child(self, job_id: int) -> None:
        """The job of an uploaded model in a child under limits (:mod:`service.jobchild`); the child records
        the job's trials and outcome; one it could not record (killed by a limit, crashed) fails the job."""
        child = run_job_in_child(self.settings, job_id, self.id, self.stop_event)
        self.last_child = child
        log.info("worker %s: job %d's child exited with %d (peak RSS %d MiB)", self.id, job_id, child.returncode,
                 child.max_rss_bytes // 2**20)
        if child.returncode == 0 or self.stop_event.is_set() or self._status(job_id) != JobStatus.RUNNING:
            return
        killed = child.signal_name
        why = (f"was killed by {killed}" if killed else f"exited with status {child.returncode}")
        if killed in ("SIGXCPU", "SIGKILL") or child.returncode == 1:
            why += " (a resource limit?)"
        error = (f"workload: training the uploaded model {why}; each job of an uploaded model runs within "
                 f"{limits_text(self.settings)}: reduce workload_options.batch_size or the dataset")
        self._write(lambda s: store.transition(s, job_id, JobStatus.FAILED, error))

    def _profile(self, owner: str, name: str) -> TargetProfile:
        """A built-in profile, or the owner's uploaded one."""
        with self.db.session() as session:
            profile = store.target_profile(session, owner, name)
        if profile is None:
            raise ValueError(f"profile: {name!r} no longer exists")
        return profile

    def _status(self, job_id: int) -> JobStatus | None:
        with self.db.session() as session:
            return store.job_status(session, job_id)

    def _should_stop(self, job_id: int) -> bool:
        if self.stop_event.is_set():
            return True
        try:
            return self._status(job_id) != JobStatus.RUNNING
        except Exception as exc:  # noqa: BLE001 - DB hiccup: keep going, the next check retries
            log.warning("worker %s: cannot read job %d status: %s", self.id, job_id, exc)
            return False

    def _write(self, fn: Callable[[Session], Any]) -> Any:
        """Run ``fn(session)`` in a transaction, retrying over dropped connections."""

        def once() -> Any:
            with self.db.session() as session:
                return fn(session)

        def warn(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning("worker %s: write failed (%s), retrying", self.id, exc)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((OperationalError, DisconnectionError)),
            stop=tenacity.stop_after_attempt(WRITE_RETRIES),
            wait=tenacity.wait_incrementing(start=WRITE_BACKOFF_S, increment=WRITE_BACKOFF_S),
            before_sleep=warn, reraise=True,
        )(once)

    def _record(self, run: _JobRun, outcome: TrialOutcome) -> TrialRecord:
        data = outcome.to_json()  # JSON columns cannot hold NaN/inf: a diverged trial keeps no number
        costs = {k: v for k, v in data["costs"].items() if v is not None}
        quality = data["quality"]
        return TrialRecord(
            number=outcome.number, assignment=data["assignment"], quality=quality,
            quality_std=data["quality_std"], n_evaluations=outcome.n_evaluations, costs=costs,
            primary_cost=costs.get(run.cost_objective), feasible=bool(outcome.feasible) and quality is not None,
            duration_s=float(outcome.duration_s), source=outcome.source, qconfig=outcome.qconfig,
        )

    def _on_trial(self, run: _JobRun, outcome: TrialOutcome, progress: SearchProgress) -> None:
        self._on_progress(run, progress)
        record = self._record(run, outcome)
        try:
            self._write(lambda s: store.record_trial(s, run.job_id, record, self.id, run.higher_is_better))
        except Exception as exc:  # noqa: BLE001 - the study has the trial; _finalize stores it again
            log.warning("worker %s: could not store trial %d of job %d: %s", self.id, outcome.number, run.job_id, exc)

    def _on_failed_trial(self, run: _JobRun, failure: TrialFailure) -> None:
        """Recorded once per (job, trial number), by whichever worker's search saw it fail: the one that
        ran it (its own error), or the one that found its dead worker's heartbeat stale."""
        try:
            self._write(lambda s: store.record_failed_trial(
                s, run.job_id, failure.number, dict(failure.assignment), failure.error, failure.retried,
            ))
        except Exception as exc:  # noqa: BLE001 - the study keeps the FAIL; the count misses it
            log.warning("worker %s: could not store failed trial %d of job %d: %s",
                        self.id, failure.number, run.job_id, exc)

    def _on_progress(self, run: _JobRun, progress: SearchProgress) -> None:
        data = progress.to_json()
        report = {
            "phase": data["phase"], "message": progress.message[:500], "elapsed_s": data["elapsed_s"],
            "eta_s": data["eta_s"], "reported_at": utcnow().isoformat(),
        }
        try:
            self._write(lambda s: store.set_search_progress(s, run.job_id, report))
        except Exception as exc:  # noqa: BLE001 - progress is advisory; the next report retries
            log.warning("worker %s: could not store progress of job %d: %s", self.id, run.job_id, exc)

    def _on_start(self, run: _JobRun, result: SearchResult) -> None:
        """Layers, pins and the fp32 reference as soon as the search knows them: the heat map, the fp32
        line and the compare page work while the job runs (and after a cancel)."""
        layers, pinned = _layers_with_pins(result)
        self._write(lambda s: store.set_job_info(
            s, run.job_id, result.metric_name, result.higher_is_better,
            json_safe(result.fp32_quality), layers, pinned,
        ))

    def _drop_weights_of_ended_job(self, job_id: int) -> None:
        """A failed, cancelled or deleted job's trial weights (a running job's stay: others may finish it)."""
        try:
            if self.settings.export_front and self._status(job_id) != JobStatus.RUNNING:
                remove_trial_weights(self.settings, job_id)
        except Exception as exc:  # noqa: BLE001 - the folder is only a working copy
            log.warning("worker %s: could not remove the trial weights of job %d: %s", self.id, job_id, exc)

    def _weights_dir(self, job_id: int) -> str | None:
        return str(trial_weights_dir(self.settings, job_id)) if self.settings.export_front else None

    def _front_artefacts(self, run: _JobRun, result: SearchResult) -> list[ArtefactRecord]:
        """The front's weights and checked ONNX, for the points whose weights this worker's machine holds
        and that are not stored yet at the same QAT steps (made before the final transaction: exports take
        a while).  A worker that leaves before the end stores those of its own, so the finalizer on another
        machine finds them."""
        if not self.settings.export_front or run.workload is None:
            return []
        with self.db.session() as session:
            stored = store.exported_points(session, run.job_id)
        todo = [p for p in result.front if stored.get(p.number, -1) != p.qat_steps]
        return front_artefacts(run.workload, todo, trial_weights_dir(self.settings, run.job_id))

    def _finalize(self, run: _JobRun, result: SearchResult) -> None:
        layers, pinned = _layers_with_pins(result)
        artefacts = self._front_artefacts(run, result)

        def finish(session: Session) -> bool:
            # a worker whose search returned while others still run trials leaves the report to the last
            # one, whose result includes those trials (if they all leave at once, a joiner finalizes)
            if store.other_live_workers(session, run.job_id, self.id, self.stale_before()):
                for artefact in artefacts:  # what this worker trained, for the one that finalizes
                    if artefact.data is not None:
                        store.put_artefact(session, run.job_id, artefact)
                return False
            store.set_job_info(
                session, run.job_id, result.metric_name, result.higher_is_better, json_safe(result.fp32_quality),
                layers, pinned,
            )
            for outcome in [*result.trials, *result.front]:  # the front carries re-evaluated qualities + qconfigs
                store.record_trial(session, run.job_id, self._record(run, outcome), None, result.higher_is_better)
            store.mark_front(session, run.job_id, [o.number for o in result.front])
            for artefact in artefacts:  # a reason never replaces a file another worker stored
                store.put_artefact(session, run.job_id, artefact, keep_stored_file=True)
            if result.fidelity is not None:
                store.set_job_fidelity(session, run.job_id, result.fidelity.to_json())
            store.transition(session, run.job_id, JobStatus.SUCCEEDED)
            return True

        if self._write(finish) and self.settings.export_front:
            remove_trial_weights(self.settings, run.job_id)


def _layers_with_pins(result: SearchResult) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The job's layer list (the float layers after the layers, marked: ``service.schemas.split_layers``)."""
    floats = [{**f.as_dict(), FLOAT_LAYER_MARK: True} for f in result.float_layers]
    return [layer.to_json() for layer in result.layers] + floats, dict(result.pin_reasons)
