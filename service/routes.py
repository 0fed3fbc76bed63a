"""The ``/v1`` REST routes.  Thin: validate, call ``store``, convert rows to API schemas.  HTTP error
mapping lives here and nowhere else."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Header, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from search import (
    BUILTIN_WORKLOADS,
    CostObjective,
    LayerGraph,
    ProfileError,
    SamplerName,
    SearchSpaceError,
    WorkloadError,
    build_space,
    builtin_layer_graph,
    builtin_profiles,
    parse_profile_text,
    pretrain_steps_of,
    trial_filename,
)
from service import auth, store
from service.db import Database
from service.deps import DbDep, OwnerDep, RoleDep, SettingsDep, StreamOwnerDep
from service.models import TERMINAL, ArtefactKind, Base, Job, JobStatus, TokenRole, Trial, UploadKind, utcnow
from service.pareto_view import ParetoViews, TrialPages
from service.schemas import (
    INT32_MAX,
    NAME_RE,
    Best,
    CheapestOut,
    Counts,
    FrontSummaryOut,
    JobCreate,
    JobOut,
    JobPage,
    Meta,
    ParetoOut,
    ProfileOut,
    Progress,
    TrialOut,
    TrialPage,
    UploadOut,
)
from service.settings import Settings
from service.uploads import (
    UploadError,
    UploadWorkloadOptions,
    check_batch_fits,
    check_dataset_fits,
    estimated_job_bytes,
    inspect_dataset,
    inspect_model,
    layer_graph_of,
)

router = APIRouter(prefix="/v1")

JobId = Annotated[int, Path(ge=1, le=INT32_MAX, description="job id")]
TrialNumber = Annotated[int, Path(ge=0, le=INT32_MAX, description="trial number")]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
]
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# the qconfig file's JSON Schema, a component of the OpenAPI document (service.main adds it)
QCONFIG_SCHEMA_REF = "#/components/schemas/QConfigFile"
# the formats the submit form offers (any w<bits>a<bits> is accepted; these are the useful ones)
DASHBOARD_FORMATS = ("int4", "int8", "fp16", "w4a8", "w8a16", "fp32")


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


MAX_MESSAGE_CHARS = 2000  # an error echoes names from the request or the upload: a 20 MB name stays out


def capped(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _unprocessable(field: str | tuple[str | int, ...], msg: str, value: Any = None) -> HTTPException:
    """A 422 like pydantic's; ``field`` is a body field or a path into the body (``("pins", 2, "match")``).
    The message is capped at :data:`MAX_MESSAGE_CHARS`; ``input`` is dropped when its JSON would be larger."""
    loc = [field] if isinstance(field, str) else list(field)
    if value is not None and len(json.dumps(value, default=str)) > MAX_MESSAGE_CHARS:
        value = None
    return HTTPException(422, [{"loc": ["body", *loc], "msg": capped(msg), "type": "value_error", "input": value}])


def _value_at(body: dict[str, Any], loc: tuple[str | int, ...]) -> Any:
    """What the request held at ``loc`` (None where the path leaves it)."""
    value: Any = body
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


# ---------------------------------------------------------------------------------------------
# Conversions: DB rows -> API schemas
# ---------------------------------------------------------------------------------------------


def _columns(row: Base) -> dict[str, Any]:
    """A row's column values by name, for ``model_validate`` next to values the row does not hold."""
    return {attr.key: getattr(row, attr.key) for attr in sa_inspect(row).mapper.column_attrs}


def job_out(job: Job, counts: store.TrialCounts, front: FrontSummaryOut | None = None) -> JobOut:
    finished = counts.complete
    best = None
    if job.best_quality is not None and job.best_trial is not None:
        best = Best(quality=job.best_quality, trial_number=job.best_trial)
    reported = job.search_progress or {}
    progress = Progress(
        finished=finished, total=job.n_trials, fraction=min(1.0, finished / job.n_trials), **reported
    )
    if job.status in TERMINAL:
        # a cancelled job's worker may still finish its trial; it works for nobody now
        counts = dataclasses.replace(counts, running=0)
    return JobOut.model_validate(
        {**_columns(job), "progress": progress, "counts": Counts.model_validate(counts), "best": best,
         "front": front}
    )


def trial_out(trial: Any, on_front: bool | None = None) -> TrialOut:
    """A Trial row (or a row of ``store.TRIAL_OUT_COLUMNS``) as the API shows it."""
    out = TrialOut.model_validate(trial)
    return out if on_front is None else out.model_copy(update={"on_front": on_front})


def _stale_before(settings: Settings) -> datetime:
    return utcnow() - timedelta(seconds=settings.stale_after_s)


def _front_summary(session: Session, job: Job, size: int | None, cheapest: store.Cheapest | None,
                   views: ParetoViews | None) -> FrontSummaryOut:
    if size is None and views is not None and job.status == JobStatus.RUNNING:
        size = len(views.front(session, job))  # the live front, as /pareto has it (cached per job)
    objective = str((job.spec.get("cost_objectives") or ["bitops"])[0])
    return FrontSummaryOut(
        size=size or None, final=bool(job.front_final),
        cheapest=None if cheapest is None else CheapestOut(
            trial_number=cheapest.number, quality=cheapest.quality, cost=cheapest.cost, cost_objective=objective),
    )


def _jobs_out(session: Session, jobs: Sequence[Job], settings: Settings,
              views: ParetoViews | None = None) -> list[JobOut]:
    """``views``: count a running job's live front (the jobs list); without, only a final front has a size."""
    counts = store.trial_counts(session, [j.id for j in jobs], _stale_before(settings))
    fronts = store.front_summaries(session, jobs)
    return [job_out(j, counts[j.id], _front_summary(session, j, *fronts[j.id], views)) for j in jobs]


def _owned_job(session: Session, job_id: int, owner: str) -> Job:
    job = store.get_job(session, job_id, owner)
    if job is None:
        raise _not_found(f"job {job_id}")
    return job


# ---------------------------------------------------------------------------------------------
# Meta
# ---------------------------------------------------------------------------------------------


@router.get("/meta", response_model=Meta)
def meta(db: DbDep, owner: OwnerDep, settings: SettingsDep) -> Meta:
    with db.session() as session:
        profiles = builtin_profiles() + store.profile_names(session, owner)
        profile_formats = {}
        for name in profiles:  # what "no format checked" means for each (search.study.space.searched_formats)
            try:
                profile = store.target_profile(session, owner, name)
            except ValueError:  # a stored profile that no longer validates: the submit check names it
                continue
            if profile is not None:
                profile_formats[name] = [f for f in profile.formats if f != "fp32"]
    return Meta(
        profile_formats=profile_formats,
        workloads=[*BUILTIN_WORKLOADS, *settings.allowed_workloads],
        profiles=profiles,
        formats=list(DASHBOARD_FORMATS),
        cost_objectives=[c.value for c in CostObjective],
        samplers=[s.value for s in SamplerName],
        defaults=JobCreate(workload="digits").model_dump(mode="json"),
        help={name: field.description for name, field in JobCreate.model_fields.items() if field.description},
    )


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def _check_job_limits(session: Session, body: JobCreate, owner: str, role: TokenRole, settings: Settings) -> None:
    """Per-owner limits: 403 (priority needs the operator role), 422 (training work of one job), 429
    (too many active jobs); each names the field and the operator's setting."""
    if body.priority > settings.max_priority_without_operator and role is not TokenRole.OPERATOR:
        raise HTTPException(
            403, f"priority: {body.priority} is above {settings.max_priority_without_operator}, which needs an "
            "operator token (`mixq token create --role operator`; MIXQ_MAX_PRIORITY_WITHOUT_OPERATOR)",
        )
    pretrain = pretrain_steps_of(body.workload, body.workload_options) if body.model is None else 0
    steps = body.n_trials * body.qat_steps + pretrain
    if steps > settings.max_qat_steps_per_job:
        field: str | tuple[str, str] = "qat_steps"
        if pretrain > settings.max_qat_steps_per_job // 2:
            field = ("workload_options", "pretrain_steps")
        raise _unprocessable(
            field, f"n_trials x qat_steps + pretrain_steps = {body.n_trials} x {body.qat_steps} + {pretrain} = {steps} "
            f"is above the limit of {settings.max_qat_steps_per_job} training steps per job "
            "(MIXQ_MAX_QAT_STEPS_PER_JOB)", body.qat_steps if field == "qat_steps" else pretrain,
        )
    active = store.active_job_count(session, owner)
    if active >= settings.max_active_jobs_per_owner:
        raise HTTPException(
            429, f"jobs: {owner!r} already has {active} queued or running jobs, the limit "
            f"(MIXQ_MAX_ACTIVE_JOBS_PER_OWNER={settings.max_active_jobs_per_owner}); wait for one to finish or "
            "cancel one",
        )


def _check_upload_job(body: JobCreate, model_info: dict[str, Any], dataset_info: dict[str, Any],
                      settings: Settings) -> None:
    """An uploaded model's options, and whether one training batch fits the memory its job runs within."""
    try:
        opts = UploadWorkloadOptions.parse(body.workload_options)
    except (UploadError, TypeError) as exc:
        raise _unprocessable("workload_options", str(exc), body.workload_options) from None
    try:
        check_dataset_fits(body.model or "", model_info, dataset_info)
    except UploadError as exc:
        raise _unprocessable("dataset", str(exc), body.dataset) from None
    try:
        check_batch_fits(body.model or "", model_info, opts.batch_size)
    except UploadError as exc:
        raise _unprocessable(("workload_options", "batch_size"), str(exc), opts.batch_size) from None
    need = estimated_job_bytes(model_info, dataset_info, opts.batch_size)
    limit = settings.upload_job_memory_bytes
    if need is not None and need > limit:
        fits = [b for b in (2**k for k in range(13))
                if (estimated_job_bytes(model_info, dataset_info, b) or 0) <= limit]
        hint = (f"at most about {fits[-1]}" if fits
                else "no batch size fits: the model's or the dataset's size alone is above it")
        raise _unprocessable(
            ("workload_options", "batch_size"),
            f"workload_options.batch_size: a job of model {body.model!r} at batch size {opts.batch_size} needs about "
            f"{need // 2**20} MiB (activations of one training batch, the parameters' copies and the dataset), above "
            f"the {limit // 2**20} MiB a job of an uploaded model runs within (MIXQ_UPLOAD_JOB_MEMORY_BYTES); {hint}",
            opts.batch_size,
        )


def _validate_job(session: Session, body: JobCreate, owner: str, settings: Settings) -> None:
    """Checks that need the database or the search library; raise 422 naming the field.  What can be known
    before a worker starts is refused here rather than becoming a failed job: pins and groups that match no
    layer, formats or pins the profile forbids, a space with nothing left to search."""
    graph: LayerGraph | None = None
    if body.model is not None or body.dataset is not None:
        if body.model is None or body.dataset is None:
            raise _unprocessable("model" if body.model is None else "dataset", "model and dataset go together")
        model = store.get_upload(session, owner, UploadKind.MODEL, body.model)
        if model is None:
            raise _unprocessable("model", f"no uploaded model named {body.model!r}", body.model)
        dataset = store.get_upload(session, owner, UploadKind.DATASET, body.dataset)
        if dataset is None:
            raise _unprocessable("dataset", f"no uploaded dataset named {body.dataset!r}", body.dataset)
        graph = layer_graph_of(model.info)  # None for an upload inspected before graphs were stored
        _check_upload_job(body, model.info, dataset.info, settings)
    elif body.workload in BUILTIN_WORKLOADS:
        try:  # the architecture on the meta device: no weights, no data, no training
            graph = builtin_layer_graph(body.workload, body.workload_options)
        except WorkloadError as exc:
            raise _unprocessable("workload_options", str(exc), body.workload_options) from None
    elif body.workload not in settings.allowed_workloads:
        raise _unprocessable(
            "workload",
            f"unknown workload {body.workload!r}; built-in: {', '.join(BUILTIN_WORKLOADS)}; entry points must be "
            "allow-listed by the operator (MIXQ_ALLOWED_WORKLOADS); or upload a model and dataset",
            body.workload,
        )
    # an allow-listed entry point is not imported in the API process: its worker checks the space
    try:
        profile = store.target_profile(session, owner, body.profile)
    except ProfileError as exc:  # stored under an older, looser schema
        raise _unprocessable("profile", f"profile {body.profile!r} no longer validates: {exc}", body.profile) from None
    if profile is None:
        raise _unprocessable("profile", f"unknown profile {body.profile!r}", body.profile)
    if graph is not None:
        try:
            build_space(body, graph, profile)  # the worker's own rules (search.study.space), so the same messages
        except SearchSpaceError as exc:
            raise _unprocessable(exc.loc, str(exc), _value_at(body.model_dump(mode="json"), exc.loc)) from None


@router.post("/jobs", response_model=JobOut, status_code=201, responses={200: {"model": JobOut}})
def create_job(
    body: JobCreate, response: Response, db: DbDep, owner: OwnerDep, role: RoleDep, settings: SettingsDep,
    request: Request, idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Submit a job.  The same ``Idempotency-Key`` returns the same job (200)."""
    spec = body.model_dump(mode="json")
    with db.session() as session:
        if idempotency_key is not None:
            existing = store.job_by_idempotency_key(session, owner, idempotency_key)
            if existing is not None:
                return _repeat(existing, spec, response, session, settings)
        _validate_job(session, body, owner, settings)
    try:
        with db.session() as session:
            store.lock_owner(session, owner)  # the limits' counts hold until the insert commits
            if idempotency_key is not None:
                existing = store.job_by_idempotency_key(session, owner, idempotency_key)
                if existing is not None:
                    return _repeat(existing, spec, response, session, settings)
            _check_job_limits(session, body, owner, role, settings)
            job = store.add_job(session, owner, spec, body.n_trials, body.priority, idempotency_key)
            out = _jobs_out(session, [job], settings)[0]
    except IntegrityError:  # a concurrent request with the same key won the insert
        with db.session() as session:
            existing = store.job_by_idempotency_key(session, owner, idempotency_key or "")
            if existing is None:
                raise
            return _repeat(existing, spec, response, session, settings)
    request.app.state.metrics.jobs_submitted.inc()
    return out


def _repeat(job: Job, spec: dict[str, Any], response: Response, session: Session, settings: Settings) -> JobOut:
    if job.spec != spec:
        raise HTTPException(409, "Idempotency-Key: already used for a different job spec")
    response.status_code = 200
    return _jobs_out(session, [job], settings)[0]


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    db: DbDep, owner: OwnerDep, settings: SettingsDep, request: Request, status: JobStatus | None = None,
    limit: Limit = 50, offset: Offset = 0,
) -> JobPage:
    views: ParetoViews = request.app.state.pareto_views
    with db.session() as session:
        jobs, total = store.list_jobs(session, owner, status, limit, offset)
        return JobPage(items=_jobs_out(session, jobs, settings, views), total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, db: DbDep, owner: OwnerDep, settings: SettingsDep) -> JobOut:
    with db.session() as session:
        return _jobs_out(session, [_owned_job(session, job_id, owner)], settings)[0]


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, db: DbDep, owner: OwnerDep, settings: SettingsDep) -> JobOut:
    """Cancel a queued or running job (workers stop within one trial); a finished job is returned as is."""
    with db.session() as session:
        _owned_job(session, job_id, owner)
        store.transition(session, job_id, JobStatus.CANCELLED)
    with db.session() as session:
        return _jobs_out(session, [_owned_job(session, job_id, owner)], settings)[0]


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: JobId, db: DbDep, owner: OwnerDep) -> Response:
    """Delete a job and its trials (a running job is cancelled first)."""
    with db.session() as session:
        _owned_job(session, job_id, owner)
        store.transition(session, job_id, JobStatus.CANCELLED)
        store.delete_job(session, job_id)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/trials", response_model=TrialPage)
def list_trials(
    job_id: JobId, db: DbDep, owner: OwnerDep, request: Request, limit: Limit = 50, offset: Offset = 0,
    sort: Annotated[str, Query(pattern=r"^-?(number|quality|cost)$")] = "number",
) -> Response:
    """Trials, paginated; ``on_front`` agrees with ``/pareto`` (the live front while the job runs)."""
    pages: TrialPages = request.app.state.trial_pages
    with db.session() as session:
        job = _owned_job(session, job_id, owner)
        key = (job_id, job.updated_at, job.front_final, sort, limit, offset)
        body = pages.get(key)
        if body is None:
            trials, total = store.list_trials(session, job_id, sort, limit, offset)
            items = [trial_out(t, None if job.front_final else t.live_front) for t in trials]
            # the bytes FastAPI would send for the TrialPage (pydantic's JSON of the response model)
            body = TrialPage(items=items, total=total, limit=limit, offset=offset).model_dump_json().encode()
            pages.put(key, body)
    return Response(content=body, media_type="application/json")


@router.get("/jobs/{job_id}/pareto", response_model=ParetoOut)
def pareto(job_id: JobId, db: DbDep, owner: OwnerDep, request: Request) -> Response:
    """The Pareto front (final once the job succeeded, live before) and every complete trial."""
    views: ParetoViews = request.app.state.pareto_views
    with db.session() as session:
        body = views.response(session, _owned_job(session, job_id, owner))
    return Response(content=body, media_type="application/json")


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def _trial_files_for(session: Session, job_id: int, number: int, owner: str) -> tuple[Job, Trial]:
    """The owner's job and its trial ``number`` (404 naming which is missing)."""
    job = _owned_job(session, job_id, owner)
    trial = store.get_trial(session, job_id, number)
    if trial is None:
        raise _not_found(f"trial {number} of job {job_id}")
    return job, trial


def _qconfig_for_download(job: Job, trial: Trial, on_front: bool) -> dict[str, Any]:
    """The stored qconfig with what the job knows: the trial's standing (feasible, on the front) and the
    job spec as submitted (schema 2; ``provenance.spec`` otherwise holds the search request)."""
    data = dict(trial.qconfig or {})
    provenance = {**(data.get("provenance") or {}), "spec": job.spec, "job_id": job.id}
    # a file stored before schema 2 gains only optional fields: it is a valid version-2 file
    return {**data, "schema_version": max(2, int(data.get("schema_version") or 1)), "provenance": provenance,
            "feasible": bool(trial.feasible), "on_front": on_front}


@router.get(
    "/jobs/{job_id}/pareto/{number}/qconfig.json",
    responses={200: {"content": {"application/json": {"schema": {"$ref": QCONFIG_SCHEMA_REF}}},
                     "description": "the qconfig file (`search/quant/qconfig.schema.json`)"}},
)
def download_qconfig(job_id: JobId, number: TrialNumber, db: DbDep, owner: OwnerDep) -> Response:
    """Any complete trial's qconfig; ``feasible`` and ``on_front`` say where it stands (``on_front`` is the
    live front while the job runs)."""
    with db.session() as session:
        job, trial = _trial_files_for(session, job_id, number, owner)
        if trial.qconfig is None:
            raise HTTPException(409, f"trial {number}: no qconfig stored for this trial (not trained by a worker?)")
        on_front = trial.on_front if job.front_final else trial.live_front
        body = json.dumps(_qconfig_for_download(job, trial, bool(on_front)), indent=2)
        filename = trial_filename(number, trial.assignment, "qconfig")
    return Response(content=body, media_type="application/json", headers=_attachment(filename))


def _front_artefact(db: Database, job_id: int, number: int, owner: str, kind: ArtefactKind) -> Response:
    what = {ArtefactKind.ONNX: "ONNX model", ArtefactKind.WEIGHTS: "trained weights"}[kind]
    with db.session() as session:
        job, trial = _trial_files_for(session, job_id, number, owner)
        if job.status != JobStatus.SUCCEEDED:
            raise _not_found(f"{what} of trial {number}: job {job_id} is {job.status}; front points get their "
                             "weights and ONNX when the job succeeds")
        if not trial.on_front:
            raise _not_found(f"{what} of trial {number}: not on job {job_id}'s Pareto front (only front points "
                             "are kept; its qconfig.json is downloadable)")
        row = store.get_artefact(session, job_id, number, kind)
        if row is None:
            raise _not_found(f"{what} of trial {number}: none stored (the job ran before the service kept them, "
                             "or with MIXQ_EXPORT_FRONT=false)")
        if row.error is not None:
            raise _not_found(f"{what} of trial {number}: could not be made: {row.error}")
        data = store.artefact_bytes(session, row.id)
        filename = trial_filename(number, trial.assignment, kind.value)
        headers = {**_attachment(filename), "X-Content-SHA256": row.sha256 or ""}
        if row.fingerprint:
            headers["X-Mixq-Weights-Fingerprint"] = row.fingerprint
    media = "application/onnx" if kind is ArtefactKind.ONNX else "application/octet-stream"
    return Response(content=data, media_type=media, headers=headers)


_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/jobs/{job_id}/pareto/{number}/model.onnx",
    responses={200: {"content": {"application/onnx": _BINARY},
                     "description": "the front point's QDQ ONNX model (opset 21), checked in onnxruntime"}},
)
def download_onnx(job_id: JobId, number: TrialNumber, db: DbDep, owner: OwnerDep) -> Response:
    """A front point's QDQ ONNX model, exported by the worker from the trained weights when the job ended
    and checked in onnxruntime with its default session options.  404 for a point off the front or a job
    that has not succeeded."""
    return _front_artefact(db, job_id, number, owner, ArtefactKind.ONNX)


@router.get(
    "/jobs/{job_id}/pareto/{number}/weights",
    responses={200: {"content": {"application/octet-stream": _BINARY},
                     "description": "a mixq checkpoint: `torch.load(path, weights_only=True)`; for `mixq export`"}},
)
def download_weights(job_id: JobId, number: TrialNumber, db: DbDep, owner: OwnerDep) -> Response:
    """A front point's trained weights (a mixq checkpoint with the weights' fingerprint, also in the
    ``X-Mixq-Weights-Fingerprint`` header); ``mixq export --qconfig ... --weights ...`` takes them."""
    return _front_artefact(db, job_id, number, owner, ArtefactKind.WEIGHTS)


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


@router.get("/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(
    job_id: JobId, db: DbDep, owner: StreamOwnerDep, settings: SettingsDep, request: Request
) -> StreamingResponse:
    """Server-Sent Events: ``progress`` (Job), ``trial`` (Trial), and a final ``done`` (Job)."""

    def snapshot(after_id: int) -> tuple[JobOut | None, list[tuple[int, TrialOut]]]:
        with db.session() as session:
            job = store.get_job(session, job_id, owner)
            if job is None:
                return None, []
            new = [(t.id, trial_out(t)) for t in store.trial_numbers_after(session, job_id, after_id)]
            return _jobs_out(session, [job], settings)[0], new

    first, _ = await run_in_threadpool(snapshot, 2**62)
    if first is None:
        raise _not_found(f"job {job_id}")
    token: str | None = request.state.stream_token

    def token_revoked() -> bool:
        with db.session() as session:
            return auth.owner_of(session, token) is None if token is not None else False

    async def stream() -> AsyncIterator[bytes]:
        after_id, last = 0, ""
        while True:
            if await run_in_threadpool(token_revoked):
                yield _sse("error", json.dumps({"detail": "Authorization: the token was revoked or has expired"}))
                return
            job, trials = await run_in_threadpool(snapshot, after_id)
            if job is None:
                yield _sse("done", json.dumps({"id": job_id, "status": "deleted"}))
                return
            for row_id, trial in trials:
                after_id = max(after_id, row_id)
                yield _sse("trial", trial.model_dump_json())
            current = job.model_dump_json()
            if job.status in TERMINAL:
                yield _sse("done", current)
                return
            if current != last:
                yield _sse("progress", current)
                last = current
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.events_poll_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------------------------
# Uploads and profiles
# ---------------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise _unprocessable(
            "name", "1-100 characters: letters, digits, '_', '.', '-'; starting with a letter or digit", name
        )
    return name


async def _read_upload(file: StarletteUploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"file: larger than the limit of {limit} bytes")
    return data


INSPECTION_RETRY_AFTER_S = 5


def _check_quota(session: Session, owner: str, size: int, settings: Settings) -> None:
    held = store.upload_bytes_of_owner(session, owner)
    if held + size > settings.max_upload_bytes_per_owner:
        raise HTTPException(
            429, f"file: {owner!r} holds {held} bytes of uploads; {size} more would pass the limit of "
            f"{settings.max_upload_bytes_per_owner} bytes per owner (MIXQ_MAX_UPLOAD_BYTES_PER_OWNER)",
        )


def _inspect(request: Request, db: Database, owner: str, data: bytes, settings: Settings,
             inspect: Callable[[bytes], Any]) -> Any:
    """``inspect(data)`` in the sandbox once the owner's quota has room for ``data`` and a place among the
    inspections running at once is free (MIXQ_MAX_CONCURRENT_INSPECTIONS; else 429 with Retry-After)."""
    with db.session() as session:  # before the child: an owner over the quota costs no inspection
        _check_quota(session, owner, len(data), settings)
    slots: threading.BoundedSemaphore = request.app.state.inspections
    if not slots.acquire(blocking=False):
        raise HTTPException(
            429, f"file: {settings.max_concurrent_inspections} uploads are being inspected, the limit "
            f"(MIXQ_MAX_CONCURRENT_INSPECTIONS); retry in {INSPECTION_RETRY_AFTER_S} s",
            headers={"Retry-After": str(INSPECTION_RETRY_AFTER_S)},
        )
    try:
        return inspect(data)
    except UploadError as exc:
        raise _unprocessable("file", str(exc)) from None
    finally:
        slots.release()


def _store_upload(
    db: Database, owner: str, kind: UploadKind, name: str, data: bytes, info: dict[str, Any], settings: Settings
) -> UploadOut:
    try:
        with db.session() as session:
            store.lock_owner(session, owner)  # the quota's sum holds until the insert commits
            _check_quota(session, owner, len(data), settings)
            row = store.add_upload(session, owner, kind, name, data, hashlib.sha256(data).hexdigest(), info)
            return UploadOut.model_validate(row)
    except IntegrityError:
        raise HTTPException(409, f"name: a {kind.value} named {name!r} already exists") from None


@router.post("/models", response_model=UploadOut, status_code=201)
async def upload_model(
    file: Annotated[UploadFile, File(description="an fp32 ONNX model (.onnx, opset >= 13); .pt2 is refused")],
    name: Annotated[str, Form(max_length=100)], db: DbDep, owner: OwnerDep, settings: SettingsDep, request: Request,
) -> UploadOut:
    """Upload a model.  It is parsed in a sandboxed child process against an operator allow-list; nothing in it
    is evaluated, unpickled or turned into code."""
    _check_name(name)
    data = await _read_upload(file, settings.max_model_bytes)
    sanitized, info = await run_in_threadpool(_inspect, request, db, owner, data, settings, inspect_model)
    return await run_in_threadpool(_store_upload, db, owner, UploadKind.MODEL, name, sanitized, info, settings)


@router.post("/datasets", response_model=UploadOut, status_code=201)
async def upload_dataset(
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train[, x_test, y_test]")],
    name: Annotated[str, Form(max_length=100)], db: DbDep, owner: OwnerDep, settings: SettingsDep, request: Request,
) -> UploadOut:
    _check_name(name)
    data = await _read_upload(file, settings.max_dataset_bytes)
    info = await run_in_threadpool(_inspect, request, db, owner, data, settings, inspect_dataset)
    return await run_in_threadpool(_store_upload, db, owner, UploadKind.DATASET, name, data, info, settings)


T = TypeVar("T")


def _too_large(exc: BaseException) -> bool:
    return isinstance(exc, StarletteHTTPException) and exc.status_code == 413


async def _within_body_limit(reading: Awaitable[T], settings: Settings) -> T:
    """``await reading`` (the body, or the form); a body over the limit is a JSON 413.  Starlette's limiter
    raises its 413 inside ``receive``, which the request-counting middleware's task group wraps in an
    exception group that no handler matches: without this it was a 500."""
    limit = settings.max_profile_bytes
    try:
        return await reading
    except BaseExceptionGroup as group:
        if group.subgroup(_too_large) is not None:
            raise HTTPException(413, f"body: larger than the limit of {limit} bytes") from None
        raise
    except StarletteHTTPException as exc:
        if _too_large(exc):
            raise HTTPException(413, f"body: larger than the limit of {limit} bytes") from None
        raise


@router.post(
    "/profiles", response_model=ProfileOut, status_code=201,
    openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "description": "a target profile"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    }}},
)
async def upload_profile(request: Request, db: DbDep, owner: OwnerDep, settings: SettingsDep) -> ProfileOut:
    """A target profile as a JSON body or a YAML/JSON file (multipart ``file``); named by its ``name``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await _within_body_limit(
            request.form(max_files=1, max_fields=4, max_part_size=settings.max_profile_bytes), settings
        )
        upload = form.get("file")
        if not isinstance(upload, StarletteUploadFile):
            raise _unprocessable("file", "a multipart 'file' part is required")
        raw = await _read_upload(upload, settings.max_profile_bytes)
    else:
        raw = await _within_body_limit(request.body(), settings)
        if len(raw) > settings.max_profile_bytes:
            raise HTTPException(413, f"body: larger than the limit of {settings.max_profile_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _unprocessable("file", "not UTF-8 text") from None
    if "\x00" in text:
        raise _unprocessable("file", "must not contain NUL characters")
    try:
        profile = parse_profile_text(text, "profile")
    except (ProfileError, ValueError) as exc:
        raise _unprocessable("file", str(exc)) from None
    if profile.name in builtin_profiles():
        raise _unprocessable("name", f"{profile.name!r} is a built-in profile; choose another name", profile.name)
    canonical = profile.model_dump(mode="json")
    try:
        with db.session() as session:
            row = store.add_profile(session, owner, profile.name, json.dumps(canonical))
            created = row.created_at
    except IntegrityError:
        raise HTTPException(409, f"name: a profile named {profile.name!r} already exists") from None
    return ProfileOut(name=profile.name, profile=canonical, created_at=created)
