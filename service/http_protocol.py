"""uvicorn's h11 protocol with a header-read timeout.

uvicorn (0.55, with h11; httptools is not installed) has ``timeout_keep_alive`` for an idle connection
*between* requests, ``h11_max_incomplete_event_size`` for the size of a header block and
``limit_concurrency`` for the number of connections, but nothing bounds the *time* a client takes to send
its headers: one that dribbles a header byte every few seconds holds its connection (and a place under
``limit_concurrency``) for as long as it likes.  :func:`header_timeout_protocol` gives a subclass of
``H11Protocol`` that closes a connection whose request line and headers are not complete ``seconds`` after
the connection opened (or after the first byte of a following request on a kept-alive connection),
answering ``408`` first.  Once the headers are in, the body timeout (``service.security.ClientLimits``) and
the application take over.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"detail": f"headers: not complete within {seconds:g} s (MIXQ_HEADER_TIMEOUT_S)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderTimeoutH11Protocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose headers take longer than ``header_timeout_s``."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # the first bytes of a request (also a kept-alive one's next)
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # h11 parsed the request line and headers
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:  # nothing of ours in flight: say why before closing
            self.transport.write(_timeout_response(self.header_timeout_s))
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(seconds)})
