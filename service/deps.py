"""Typed FastAPI dependencies: the database, settings and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import auth
from service.db import Database
from service.models import TokenRole
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="a token from `mixq token create`")


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _owner(db: Database, settings: Settings, token: str | None) -> str:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if token is None:
        if settings.auth_required:
            raise HTTPException(401, "Authorization: a Bearer token is required", headers=unauthorized)
        return auth.LOCAL_OWNER
    with db.session() as session:
        owner = auth.owner_of(session, token)
    if owner is None:
        raise HTTPException(401, "Authorization: unknown or revoked token", headers=unauthorized)
    return owner


def current_owner(
    db: DbDep, settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The token's owner; without a token, the local owner unless auth is required."""
    return _owner(db, settings, credentials.credentials if credentials else None)


def stream_owner(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[
        str | None, Query(max_length=200, description="token for EventSource, which cannot send headers")
    ] = None,
) -> str:
    """As :func:`current_owner`, but also takes ``?token=``: the browser's EventSource cannot set an
    Authorization header.  The header wins when both are given.  The token is kept on
    ``request.state.stream_token``: a long stream re-checks it, so revoking it ends the stream."""
    given = credentials.credentials if credentials else token
    owner = _owner(db, settings, given)
    request.state.stream_token = given
    return owner


def current_role(
    db: DbDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> TokenRole:
    """The token's role (use next to :data:`OwnerDep`, which refuses a missing or dead token); without a
    token (loopback, auth off) the caller is the machine's operator."""
    if credentials is None:
        return auth.LOCAL_ROLE
    with db.session() as session:
        found = auth.caller_of(session, credentials.credentials)
    return TokenRole.USER if found is None else found[1]


OwnerDep = Annotated[str, Depends(current_owner)]
RoleDep = Annotated[TokenRole, Depends(current_role)]
StreamOwnerDep = Annotated[str, Depends(stream_owner)]


def require_operator(owner: OwnerDep, role: RoleDep) -> str:
    """The caller, if an operator (a token of the operator role; without auth, the machine's operator):
    for what spans tenants, such as ``/metrics``' job counts and request paths."""
    if role is not TokenRole.OPERATOR:
        raise HTTPException(403, "Authorization: this needs an operator token (`mixq token create --role operator`)")
    return owner
