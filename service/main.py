"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import OperationalError
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search import __version__
from service import dashboard, openapi, store
from service.db import Database
from service.deps import require_operator
from service.metrics import Metrics
from service.pareto_view import ParetoViews, TrialPages
from service.routes import MULTIPART_OVERHEAD_BYTES, router
from service.schemas import Health
from service.security import ClientLimits, HostPolicy, RequestGuard, keep_tokens_out_of_logs
from service.settings import Settings

log = logging.getLogger("mixq.api")


class BodyLimitByPath:
    """Request body limits per path (uploads get theirs, everything else the JSON limit), enforced by
    Starlette's limiter: 413 from Content-Length before anything is read, or as soon as a streamed
    body passes the limit."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.default)
        replacing_413 = False

        async def send_json_413(message: Message) -> None:
            # Starlette's limiter answers in plain text; every other error of this API is JSON
            nonlocal replacing_413
            if message["type"] == "http.response.start" and message["status"] == 413:
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/plain"):
                    replacing_413 = True
                    body = json.dumps({"detail": f"body: larger than the limit of {limit} bytes"}).encode()
                    await send({"type": "http.response.start", "status": 413, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            if replacing_413:
                return
            await send(message)

        await RequestBodyLimitResponder(self.app, limit)(scope, receive, send_json_413)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings()
    db = db or Database(settings.resolved_database_url)
    app = FastAPI(
        title="mixq", version=__version__,
        description="Mixed-precision (int4/int8/fp16) quantization search with short QAT runs.",
        generate_unique_id_function=openapi.operation_id,
    )
    openapi.install(app)
    app.state.settings = settings
    app.state.db = db
    app.state.pareto_views = ParetoViews()
    app.state.trial_pages = TrialPages()
    app.state.inspections = threading.BoundedSemaphore(settings.max_concurrent_inspections)
    keep_tokens_out_of_logs()

    def job_counts() -> dict[str, int]:
        with db.session() as session:
            return store.job_counts_by_status(session)

    metrics = Metrics(job_counts)
    app.state.metrics = metrics

    app.include_router(router)
    app.include_router(dashboard.router)

    @app.get("/livez", response_model=Health, tags=["health"])
    def livez() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz() -> Response:
        try:
            db.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the DB means "not ready"
            log.warning("readyz: database unreachable: %s", exc)
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    # operators only when auth is on: request paths and job counts of every tenant say what others are doing
    @app.get("/metrics", tags=["health"], response_class=Response, dependencies=[Depends(require_operator)])
    async def prometheus_metrics() -> Response:
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input, which may be NaN/inf (not JSON) or huge: keep loc/msg/type
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency_s.labels(path).observe(time.perf_counter() - started)
        return response

    upload_limits = {
        "/v1/models": settings.max_model_bytes + MULTIPART_OVERHEAD_BYTES,
        "/v1/datasets": settings.max_dataset_bytes + MULTIPART_OVERHEAD_BYTES,
        "/v1/profiles": settings.max_profile_bytes + MULTIPART_OVERHEAD_BYTES,
    }
    app.add_middleware(BodyLimitByPath, limits=upload_limits, default=settings.max_json_bytes)
    app.add_middleware(ClientLimits, body_timeout_s=settings.body_timeout_s,
                       max_in_flight=settings.max_requests_per_client)
    # outermost: a request for a host we don't serve, or a cross-site write, touches nothing else
    app.add_middleware(RequestGuard, hosts=HostPolicy(settings.allowed_hosts, settings.host))
    return app
