"""API tokens: a random secret shown once, stored as its SHA-256 (a 256-bit random secret needs no salt
or slow hash: guessing is hopeless and the hash is a lookup key)."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session

from service import store
from service.models import TokenRole, utcnow

LOCAL_OWNER = "local"  # who every request is on loopback without auth
# without auth the server is the caller's own machine (loopback only): the caller is its operator
LOCAL_ROLE = TokenRole.OPERATOR
TOKEN_PREFIX = "mixq_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
DURATION_RE = re.compile(r"^(?P<amount>\d{1,9})(?P<unit>[smhd]?)$")
DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, owner: str, name: str = "", expires_in: timedelta | None = None,
    role: TokenRole = TokenRole.USER,
) -> str:
    """A new token for ``owner`` with ``role``, valid for ``expires_in`` (``None``: until revoked); the
    plaintext is returned once and never stored."""
    if not OWNER_RE.match(owner):
        raise ValueError(f"owner: {owner!r} must be 1-100 characters of letters, digits, '_', '.', '@', '-'")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError(f"expires_in: {expires_in} must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    store.add_token(session, owner, name[:100], hash_token(token), expires_at, role)
    return token


def parse_duration(text: str) -> timedelta:
    """``'90d'``, ``'12h'``, ``'30m'``, ``'45s'`` (or plain seconds) as a timedelta."""
    match = DURATION_RE.match(text.strip())
    if match is None or int(match["amount"]) == 0:
        raise ValueError(f"expires_in: {text!r} is not a positive duration like 90d, 12h, 30m or 3600")
    return timedelta(seconds=int(match["amount"]) * DURATION_UNIT_S[match["unit"] or "s"])


def owner_of(session: Session, token: str) -> str | None:
    found = caller_of(session, token)
    return None if found is None else found[0]


def caller_of(session: Session, token: str) -> tuple[str, TokenRole] | None:
    """(owner, role) of a live token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return store.caller_of_token(session, hash_token(token))
