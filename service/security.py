"""Browser-facing request guards: which ``Host`` is served, which origins may change state, and the
headers that keep the dashboard out of other sites' frames.

Why each rule (the server runs on developers' machines, loopback and auth off by default):

- ``Host``: a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 (DNS rebinding) is
  same-origin with itself, so the browser lets it read the API's answers.  The only thing the server
  sees that differs is the ``Host`` header: serve only loopback names and hosts the operator lists.
- ``Origin`` / ``Sec-Fetch-Site``: any page can send a "simple" multipart POST to 127.0.0.1 without a
  CORS preflight (upload, submit, cancel, delete).  Browsers send ``Origin`` with every POST, PUT, PATCH
  and DELETE, so a state-changing request whose ``Origin`` is not this server is refused, auth on or off.
  Clients that are not browsers (curl, httpx, the CLI) send neither header and are not affected.
- Redirects: Starlette's trailing-slash redirect builds an absolute URL from the request's ``Host``; the
  guard makes it relative so a response never echoes that header back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The dashboard loads only its own scripts and styles (service/static, Plotly from the package).
# style-src allows inline styles: Plotly sets style attributes and injects a <style> element for its
# own rules.  frame-ancestors 'none' stops clickjacking of the submit/cancel/delete buttons.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


# A bearer token in a query string (EventSource cannot send headers: ``/v1/jobs/1/events?token=...``)
# or anywhere else in a log line.  Access logs are read by more people than the API's owners.
TOKEN_IN_QUERY_RE = re.compile(r"(?i)((?:^|[?&])token=)[^&\s\"]*")
TOKEN_RE = re.compile(r"mixq_[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"


def redact_tokens(text: str) -> str:
    return TOKEN_RE.sub(REDACTED, TOKEN_IN_QUERY_RE.sub(r"\1" + REDACTED, text))


class RedactTokens(logging.Filter):
    """Blanks tokens in a record's message and arguments (uvicorn's access log passes the full path,
    query string included, as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def keep_tokens_out_of_logs(logger_names: Iterable[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Install :class:`RedactTokens` on uvicorn's loggers (once; uvicorn's own logging set-up keeps
    filters that are already there)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def split_host_port(value: str) -> tuple[str, str]:
    """``'[::1]:8000'`` -> ``('::1', '8000')``, ``'Example.org'`` -> ``('example.org', '')``."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    if value.count(":") > 1:  # a bare IPv6 address without a port
        return value, ""
    host, _, port = value.partition(":")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The host names this server answers to: loopback names, the bind address when it is a concrete
    one, and the operator's list (``*`` serves any host: only behind a proxy that checks it)."""

    def __init__(self, extra_hosts: Iterable[str], bind_host: str = "") -> None:
        names = {split_host_port(h)[0] for h in extra_hosts if h.strip()}
        bind = split_host_port(bind_host)[0]
        if bind and bind not in ("0.0.0.0", "::"):
            names.add(bind)
        self.any_host = "*" in names
        self.names = frozenset(names - {"*"})

    def serves(self, host_header: str) -> bool:
        host, _ = split_host_port(host_header)
        if not host:
            return False
        if self.any_host or _is_loopback(host) or host in self.names:
            return True
        # ".example.org" in the list serves its subdomains, as in Django's ALLOWED_HOSTS
        return any(name.startswith(".") and (host.endswith(name) or host == name[1:]) for name in self.names)


def cross_site_reason(method: str, headers: Headers) -> str | None:
    """Why a state-changing request is refused as cross-site, or ``None`` when it may go on."""
    if method not in STATE_CHANGING_METHODS:
        return None
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "Sec-Fetch-Site: cross-site requests may not change state on this server"
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser (curl, httpx, the CLI), or a browser's same-origin GET-like request
    parts = urlsplit(origin)
    own = split_host_port(headers.get("host", ""))
    if origin == "null" or parts.scheme not in ("http", "https") or split_host_port(parts.netloc) != own:
        return "Origin: requests that change state must come from this server's own pages"
    return None


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: the ``Host`` allow-list, the same-origin rule for state-changing requests, the
    security headers on every response, and relative redirects."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host_header = headers.get("host", "")
        if not self.hosts.serves(host_header):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            # the header is not echoed: the operator knows what they asked for, a rebinding page does not
            await _send_json(send, 400, "Host: this server does not serve that host name; "
                                        "allowed are loopback names and MIXQ_ALLOWED_HOSTS")
            return
        if scope["type"] == "http":
            reason = cross_site_reason(scope["method"], headers)
            if reason is not None:
                await _send_json(send, 403, reason)
                return
        own_prefixes = tuple(f"{scheme}://{host_header}".encode() for scheme in ("http", "https"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    response_headers.setdefault(name, value)
                location = response_headers.get("location", "").encode()
                if location.startswith(own_prefixes):
                    path = location.split(b"/", 3)[3] if location.count(b"/") >= 3 else b""
                    response_headers["location"] = "/" + path.decode()
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyStalled(Exception):
    pass


class ClientLimits:
    """ASGI middleware: at most ``max_in_flight`` requests at once from one client address (429 with
    Retry-After past that; an SSE stream counts while open), and a request body that sends nothing for
    ``body_timeout_s`` is answered 408 and its connection freed (uvicorn has no body read timeout: a client
    could hold a connection and a worker thread by sending a byte a minute).  Headers never reach this
    middleware: their read timeout is the server's (``service.http_protocol``, MIXQ_HEADER_TIMEOUT_S)."""

    def __init__(self, app: ASGIApp, body_timeout_s: float, max_in_flight: int) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.max_in_flight = max_in_flight
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("unknown",))[0])
        if self.in_flight.get(client, 0) >= self.max_in_flight:
            body = json.dumps({"detail": f"client: {self.max_in_flight} requests from this address are in "
                                         "progress, the limit (MIXQ_MAX_REQUESTS_PER_CLIENT)"}).encode()
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        body_done = False
        stalled = False
        started = False

        async def receive_with_timeout() -> Message:
            nonlocal body_done, stalled
            if body_done:  # after the body: waiting for the disconnect (SSE) is not a stall
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                stalled = True
                raise _BodyStalled from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_unless_stalled(message: Message) -> None:
            nonlocal started
            if stalled:  # the app's answer to a body that never came: replaced by the 408 below
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_with_timeout, send_unless_stalled)
        except BaseException:
            if not stalled:
                raise
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]
        if stalled and not started:
            await _send_json(send, 408, f"body: nothing received for {self.body_timeout_s:g} s "
                                        "(MIXQ_BODY_TIMEOUT_S)")
