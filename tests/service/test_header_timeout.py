"""The header-read timeout of `mixq serve` (issue 21): 5 connections sending headers byte by byte stayed
open 40 s.  A real `mixq serve` (no workers) with MIXQ_HEADER_TIMEOUT_S=1, raw sockets."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_resilience import free_port
from test_worker import wait_for

from service.cli import uvicorn_config
from service.http_protocol import HeaderTimeoutH11Protocol
from service.settings import Settings

HEADER_TIMEOUT_S = 1.0
DRIBBLE_GAP_S = 0.1
SLOW_HEADERS = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"  # 20 s at 0.1 s a byte


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp: Path = tmp_path_factory.mktemp("header-timeout")
    port = free_port()
    env = {**os.environ, "MIXQ_DATABASE_URL": f"sqlite:///{tmp / 'serve.db'}", "MIXQ_DATA_DIR": str(tmp),
           "MIXQ_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout_s=60, what="mixq serve to start")
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def dribble(sock: socket.socket, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` a byte at a time until the server answers or closes; (bytes sent, what came back up
    to the close).  Sending everything without an answer returns what was sent and b''."""
    sent = 0
    for byte in data:
        readable, _, _ = select.select([sock], [], [], DRIBBLE_GAP_S)
        if readable:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # reset by the server
            return sent, b""
        sent += 1
    answer = b""
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, OSError):
        return sent, answer + b"<still open>"
    return sent, answer


def test_slow_headers_are_answered_408_and_closed(serve: tuple[str, int]) -> None:
    def one_slow_client(_: int) -> tuple[int, bytes]:
        with socket.create_connection(serve, timeout=10) as sock:
            return dribble(sock, SLOW_HEADERS)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one_slow_client, range(5)))
    for sent, answer in results:
        assert sent < len(SLOW_HEADERS), "the whole header block went through without the server closing"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"MIXQ_HEADER_TIMEOUT_S" in answer and not answer.endswith(b"<still open>"), answer[-200:]
    # the server still answers at once
    assert httpx.get(f"http://{serve[0]}:{serve[1]}/livez", timeout=5).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(serve: tuple[str, int]) -> None:
    with socket.create_connection(serve, timeout=10) as sock:
        sent, answer = dribble(sock, b"")
    assert sent == 0 and answer.startswith(b"HTTP/1.1 408") and not answer.endswith(b"<still open>"), answer


def test_the_next_request_on_a_kept_alive_connection_has_its_own_header_timeout(serve: tuple[str, int]) -> None:
    with socket.create_connection(serve, timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b'"ok"' not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sent, answer = dribble(sock, SLOW_HEADERS)
    assert sent < len(SLOW_HEADERS)
    assert answer.startswith(b"HTTP/1.1 408") and not answer.endswith(b"<still open>"), answer[:200]


def test_complete_headers_then_a_slow_body_are_not_cut_by_the_header_timeout(serve: tuple[str, int]) -> None:
    """The timer stops once the headers are in: a body arriving 2 x the header timeout later is answered by
    the application (here a 422 for a profile that does not validate), not by the header timeout."""
    body = b'{"name": "x"}'
    head = (b"POST /v1/profiles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(serve, timeout=10) as sock:
        sock.sendall(head)
        time.sleep(2 * HEADER_TIMEOUT_S)
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 422"), answer[:300]


def test_serve_passes_the_header_timeout_to_uvicorn() -> None:
    config = uvicorn_config(Settings(header_timeout_s=3.5), object())
    assert isinstance(config.http, type) and issubclass(config.http, HeaderTimeoutH11Protocol)
    assert config.http.header_timeout_s == 3.5
    assert uvicorn_config(Settings(), object()).http.header_timeout_s == 10.0
