"""``python -m services.api`` as a user runs it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from services.api.connections import (
    HEADERS_SECONDS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_URL_BYTES,
)
from tests.conftest import ADMIN_KEY, auth
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def test_readme_example_and_docs(api_url: str) -> None:
    docs = httpx.get(f"{api_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{api_url}/openapi.json").json()
    assert {
        "/jobs",
        "/jobs/batch",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/logs",
        "/healthz",
    } <= set(schema["paths"])
    # The README's curl example, with httpx.
    r = httpx.post(
        f"{api_url}/jobs",
        json={"type": "demo.sleep", "payload": {"seconds": 2}, "priority": "high"},
        headers=auth(ADMIN_KEY),
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    got = httpx.get(f"{api_url}/jobs/{job_id}", headers=auth(ADMIN_KEY))
    assert got.status_code == 200
    assert got.json()["id"] == job_id and got.json()["priority"] == "high"


def test_every_route_documents_its_error_codes(api_url: str) -> None:
    schema = httpx.get(f"{api_url}/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if path != "/healthz":
                assert {"401", "403", "503"} <= codes, (method, path, codes)
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, (method, path, codes)
            if op.get("requestBody"):
                assert "413" in codes, (method, path, codes)


def test_refuses_to_start_without_keys(service_env: dict[str, str]) -> None:
    env = {**service_env, "SWITCHYARD_API_KEYS": "", "SWITCHYARD_API_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "services.api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "no API keys" in result.stdout + result.stderr


def test_dev_mode_without_keys_acts_as_admin(
    start_service: object, service_env: dict[str, str]
) -> None:
    from tests.e2e.conftest import wait_http_ok

    port = free_port()
    proc = start_service(
        "api",
        env={"SWITCHYARD_API_KEYS": "", "SWITCHYARD_DEV": "1", "SWITCHYARD_API_PORT": str(port)},
    )  # type: ignore[operator]
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
    r = httpx.post(f"http://127.0.0.1:{port}/jobs", json={"type": "demo.echo"})
    assert r.status_code == 201
    assert r.json()["created_by"] == "dev"
    assert "dev" in proc.output().lower()


WS_HEADERS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def answer_to(api_url: str, request: str) -> bytes:
    """What the API answers ``request`` with, once it has closed the connection (a
    connection left open fails: the read times out)."""
    port = int(api_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=HEADERS_SECONDS + 10) as conn:
        conn.sendall(request.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


TOO_LARGE = [  # (query, headers, status, why)
    ("?x=" + "u" * MAX_URL_BYTES, "", b"414", b"the URL is over"),
    ("", f"X-Padding: {'p' * MAX_HEADER_BYTES}\r\n", b"431", b"a header is over"),
    ("", "".join(f"X-Padding-{i}: 1\r\n" for i in range(MAX_HEADERS)), b"431", b"more than"),
    ("", "".join(f"X-Padding-{i}: {'p' * 1000}\r\n" for i in range(70)), b"431",
     b"the headers are over"),
]  # fmt: skip


def test_a_request_too_large_to_read_is_answered_and_closed(api_url: str) -> None:
    """Seen failing before services/api/connections.py: a plain request with 70 headers
    of 1,000 bytes (or 128 of them) was served, and a WebSocket handshake with a URL or
    header over 8 KiB got no answer in 10 s, its connection left open. (One API process
    for every case: each costs a start.)"""
    for path in ("/healthz", "/jobs/stream"):
        upgrade = WS_HEADERS if path == "/jobs/stream" else ""
        for query, headers, status, why in TOO_LARGE:
            request = (f"GET {path}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}"
                       f"{headers}Authorization: Bearer {ADMIN_KEY}\r\n\r\n")  # fmt: skip
            answer = answer_to(api_url, request)
            assert answer.startswith(b"HTTP/1.1 " + status) and why in answer, answer[:300]
    assert httpx.get(f"{api_url}/jobs?limit=1", headers=auth(ADMIN_KEY)).status_code == 200


def test_a_handshake_the_websocket_library_cannot_read_is_answered_and_closed(
    api_url: str,
) -> None:
    """A header line within the HTTP bounds but over the websockets library's 8,192
    bytes a line (its name, ': ', value and CRLF): seen failing before the WebSocket
    protocol of services/api/connections.py (no answer in 10 s, the connection open)."""
    value = "p" * (MAX_HEADER_BYTES - len("X-Padding"))
    request = (f"GET /jobs/stream?token={ADMIN_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"{WS_HEADERS}X-Padding: {value}\r\n\r\n")  # fmt: skip
    answer = answer_to(api_url, request)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:300]
    assert b"Failed to open a WebSocket connection" in answer


def whole_response(conn: socket.socket) -> bytes:
    """One response read to its last byte (its head and its body may come apart)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(65536)
    return data


def test_a_connection_that_never_completes_its_request_is_closed(api_url: str) -> None:
    """Seen failing before services/api/connections.py: the idle, the partial and the
    blank-line connections still open after 20 s (uvicorn waits for a request's
    headers for ever, and a blank line after a request stops its keep-alive timer)."""
    port = int(api_url.rsplit(":", 1)[1])

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=HEADERS_SECONDS + 10)

    idle, partial, blank, slow = connect(), connect(), connect(), connect()
    with idle, partial, blank, slow:
        opened = time.monotonic()
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        blank.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert whole_response(blank).startswith(b"HTTP/1.1 200")
        blank.sendall(b"\r\n")  # then only a blank line: no request, the connection kept
        # A request spread over a few seconds, within the deadline: served.
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(3)  # what is tested: a client this slow is still served
        slow.sendall(b"Host: 127.0.0.1\r\n\r\n")
        assert whole_response(slow).startswith(b"HTTP/1.1 200"), "a request in time is served"
        for conn in (partial, idle, blank):
            assert conn.recv(65536) == b""  # closed, without an answer
        assert time.monotonic() - opened >= HEADERS_SECONDS - 1
