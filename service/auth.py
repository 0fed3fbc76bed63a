"""API tokens: a random secret shown once, stored as its SHA-256 (a 256-bit random secret needs no salt
or slow hash: guessing is hopeless and the hash is a lookup key)."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy.orm import Session

from service import store

LOCAL_OWNER = "local"  # who every request is on loopback without auth
TOKEN_PREFIX = "mixq_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, owner: str, name: str = "") -> str:
    """A new token for ``owner``; the plaintext is returned once and never stored."""
    if not OWNER_RE.match(owner):
        raise ValueError(f"owner: {owner!r} must be 1-100 characters of letters, digits, '_', '.', '@', '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.add_token(session, owner, name[:100], hash_token(token))
    return token


def owner_of(session: Session, token: str) -> str | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return store.owner_of_token(session, hash_token(token))
