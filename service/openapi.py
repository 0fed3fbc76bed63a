"""The OpenAPI document: stable operationIds (the route functions' names), every error response a route
can give, the qconfig file's JSON Schema as a component, and the SSE events described; so that a
generated client is usable as is."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from search import qconfig_json_schema

QCONFIG_COMPONENT = "QConfigFile"
QCONFIG_DEF_PREFIX = "qconfig."

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {
        "description": "what is wrong, naming the field or the limit (a 422 holds a list of {loc, msg, type})",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
    }},
}

ERROR_DESCRIPTIONS = {
    "400": "the Host header names a host this server does not serve (MIXQ_ALLOWED_HOSTS; DNS rebinding)",
    "401": "no token, or a token that is unknown, revoked or expired (when auth is required)",
    "403": "not allowed: a cross-site write (Origin/Sec-Fetch-Site of another site), or a job priority above "
    "MIXQ_MAX_PRIORITY_WITHOUT_OPERATOR without an operator token",
    "404": "no such job, trial, upload or profile of this owner (or the file is not available: see detail)",
    "409": "conflicts with what is stored (a name already used, an Idempotency-Key for another spec)",
    "413": "the request body is larger than the operator's limit",
    "422": "a field is invalid; `detail` names it",
    "429": "a per-owner limit (active jobs, upload bytes) is reached",
    "503": "the database is unreachable; retry later",
}


def operation_id(route: APIRoute) -> str:
    """The route function's name (``create_job``, ``download_onnx``): stable across paths and methods."""
    return route.name


def _errors_for(path: str, method: str) -> list[str]:
    codes = ["400", "401", "404", "422", "503"] if "{" in path else ["400", "401", "422", "503"]
    if method != "get":
        codes.append("403")  # a cross-site write is refused before anything else
    if method == "post" and path in ("/v1/jobs", "/v1/models", "/v1/datasets", "/v1/profiles"):
        codes += ["409", "413", "429"]
    elif method == "post":
        codes.append("413")
    if path.endswith("/qconfig.json"):
        codes.append("409")
    return sorted(set(codes))


def _hoist_qconfig_schema(components: dict[str, Any]) -> None:
    schema = qconfig_json_schema()
    defs = schema.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"#/components/schemas/{QCONFIG_DEF_PREFIX}{v.rsplit('/', 1)[-1]}"
                        if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/") else rewrite(v))
                    for k, v in node.items() if k not in ("$id", "$schema")}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, sub in defs.items():
        components[f"{QCONFIG_DEF_PREFIX}{name}"] = rewrite(sub)
    components[QCONFIG_COMPONENT] = rewrite(schema)


SSE_DESCRIPTION = (
    "Server-Sent Events, one JSON object per `data:` line: `event: progress` (a Job, when it changed), "
    "`event: trial` (a Trial, once per new or updated trial), `event: done` (the final Job, or "
    '`{"id", "status": "deleted"}`), `event: error` (`{"detail"}`, e.g. the token was revoked); the stream '
    "ends after `done` or `error`.  Browsers' EventSource cannot send headers: `?token=` is accepted here."
)


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the documented version (built once, cached as FastAPI does)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = ERROR_SCHEMA
        _hoist_qconfig_schema(components)
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                responses = op["responses"]
                if path.startswith("/v1/"):
                    for code in _errors_for(path, method):
                        if code == "422" and "422" in responses:
                            continue  # FastAPI's HTTPValidationError
                        responses.setdefault(code, {
                            "description": ERROR_DESCRIPTIONS[code],
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        })
                if path.endswith("/events"):
                    ok = responses.get("200", {})
                    ok["description"] = SSE_DESCRIPTION
                    ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
