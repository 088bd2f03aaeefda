"""``python -m services.api`` as a user runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from services.api.connections import HEADERS_SECONDS
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


@pytest.mark.parametrize(
    ("extra_query", "extra_headers", "status"),
    [
        ("&job_id=" + "0" * 9000, "", b"414"),  # the request line past 8 KiB
        ("", "X-Padding: " + "p" * 9000 + "\r\n", b"431"),  # one header line past 8 KiB
        ("", "".join(f"X-Padding-{i}: 1\r\n" for i in range(200)), b"431"),  # too many
    ],
)
def test_a_handshake_too_large_to_read_is_answered_and_closed(
    api_url: str, extra_query: str, extra_headers: str, status: bytes
) -> None:
    """Seen failing before services/api/connections.py: no answer in 10 s, the connection
    left open (uvicorn never wrote the refusal the websockets library prepared)."""
    port = int(api_url.rsplit(":", 1)[1])
    request = (
        f"GET /jobs/stream?token={ADMIN_KEY}{extra_query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{extra_headers}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request.encode())
        answer = b""
        while chunk := conn.recv(65536):  # until the server closes (a timeout fails)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"Failed to open a WebSocket connection" in answer
    # The API still serves.
    assert httpx.get(f"{api_url}/jobs?limit=1", headers=auth(ADMIN_KEY)).status_code == 200


def test_a_connection_that_never_completes_its_request_is_closed(api_url: str) -> None:
    """Seen failing before services/api/connections.py: both connections still open
    after 20 s (uvicorn waits for a request's headers for ever)."""
    port = int(api_url.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port), timeout=HEADERS_SECONDS + 10)
    partial = socket.create_connection(("127.0.0.1", port), timeout=HEADERS_SECONDS + 10)
    slow = socket.create_connection(("127.0.0.1", port), timeout=HEADERS_SECONDS + 10)
    with idle, partial, slow:
        opened = time.monotonic()
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # finished in time: served
        slow.sendall(b"Host: 127.0.0.1\r\n\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 200"), "a request in time is served"
        assert partial.recv(65536) == b"" and idle.recv(65536) == b""  # closed, no answer
        assert time.monotonic() - opened >= HEADERS_SECONDS - 1
