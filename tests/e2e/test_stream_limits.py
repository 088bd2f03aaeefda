"""WebSocket bounds on real API processes: the replay cap, sockets per key, and a
revoked key's sockets closed on every replica."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import orjson
import pytest
import websockets

from shared.settings import Settings
from tests.conftest import ADMIN_KEY, VIEWER_KEY
from tests.e2e.conftest import ServiceProcess, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

LIMITS = {"SWITCHYARD_WS_REPLAY_LINES": "5", "SWITCHYARD_WS_MAX_SOCKETS_PER_KEY": "2"}


@pytest.fixture
def replicas(start_service: object) -> Iterator[list[str]]:
    """Two API processes on the same database and broker."""
    urls = []
    for _ in range(2):
        port = free_port()
        env = {"SWITCHYARD_API_PORT": str(port), **LIMITS}
        proc: ServiceProcess = start_service("api", env=env)  # type: ignore[operator]
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/healthz", proc)
        urls.append(url)
    yield urls


def ws(url: str, query: str) -> str:
    return url.replace("http://", "ws://") + "/jobs/stream?" + query


def admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})


async def until_state(sock: websockets.ClientConnection) -> list[dict]:
    events: list[dict] = []
    async with asyncio.timeout(10):
        while not events or events[-1]["event"] != "state":
            events.append(orjson.loads(await sock.recv()))
    return events


async def closed_with(sock: websockets.ClientConnection, timeout: float) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await sock.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def sql(settings: Settings, query: str, *args: object) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(settings.sync_database_url)
        try:
            await conn.execute(query, *args)
        finally:
            await conn.close()

    asyncio.run(run())


def test_replay_sends_the_latest_lines_and_says_how_many_it_left_out(
    replicas: list[str], settings: Settings
) -> None:
    with admin(replicas[0]) as http:
        job = http.post("/jobs", json={"type": "demo.echo"}).json()
    sql(
        settings,
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "SELECT $1, 1, s, now(), 'info', 'line ' || s FROM generate_series(1, 12) s",
        uuid.UUID(job["id"]),
    )

    async def replay() -> list[dict]:
        headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
        async with websockets.connect(
            ws(replicas[0], f"job_id={job['id']}&replay=true"), additional_headers=headers
        ) as sock:
            return await until_state(sock)

    events = asyncio.run(replay())
    assert events[0]["event"] == "dropped"
    assert events[0]["data"]["replay"] is True and events[0]["data"]["count"] == 7
    assert events[0]["job_id"] == job["id"]
    lines = [e["data"]["message"] for e in events if e["event"] == "log"]
    assert lines == [f"line {i}" for i in range(8, 13)]
    # The rest is there over REST, a page at a time.
    with admin(replicas[0]) as http:
        first = http.get(f"/jobs/{job['id']}/logs", params={"limit": 7}).json()
    assert [ln["message"] for ln in first["lines"]] == [f"line {i}" for i in range(1, 8)]


def test_one_socket_too_many_for_a_key_is_closed_with_a_reason(replicas: list[str]) -> None:
    with admin(replicas[0]) as http:
        job = http.post("/jobs", json={"type": "demo.echo"}).json()
    query = f"job_id={job['id']}&replay=true"  # the replay's state event: "subscribed"
    headers = {"Authorization": f"Bearer {VIEWER_KEY}"}

    async def scenario() -> tuple[int, str]:
        async with (
            websockets.connect(ws(replicas[0], query), additional_headers=headers) as a,
            websockets.connect(ws(replicas[0], query), additional_headers=headers) as b,
        ):
            for sock in (a, b):
                await until_state(sock)
            async with websockets.connect(ws(replicas[0], query), additional_headers=headers) as c:
                code, reason = await closed_with(c, timeout=5)
            # Another key, and the same key on the other replica, are not held.
            other = {"Authorization": f"Bearer {ADMIN_KEY}"}
            for url, h in ((replicas[0], other), (replicas[1], headers)):
                async with websockets.connect(ws(url, query), additional_headers=h) as sock:
                    assert (await until_state(sock))[-1]["data"]["replay"] is True
            return code, reason

    code, reason = asyncio.run(scenario())
    assert code == 1008
    assert "too many sockets for this key" in reason


def test_a_revoked_keys_sockets_close_with_1008_on_every_replica(replicas: list[str]) -> None:
    with admin(replicas[0]) as http:
        made = http.post("/api-keys", json={"role": "viewer", "label": "revoked"}).json()
        job = http.post("/jobs", json={"type": "demo.echo"}).json()
    headers = {"Authorization": f"Bearer {made['key']}"}

    async def scenario() -> list[tuple[int, str, float]]:
        query = f"job_id={job['id']}&replay=true"
        async with (
            websockets.connect(ws(replicas[0], query), additional_headers=headers) as a,
            websockets.connect(ws(replicas[1], query), additional_headers=headers) as b,
        ):
            for sock in (a, b):  # both past their key check and streaming
                assert (await until_state(sock))[-1]["data"]["replay"] is True
            revoked_at = time.monotonic()
            with admin(replicas[0]) as http:
                assert http.delete(f"/api-keys/{made['id']}").status_code == 204
            out = []
            for sock in (a, b):
                code, reason = await closed_with(sock, timeout=5)
                out.append((code, reason, time.monotonic() - revoked_at))
            return out

    for code, reason, after in asyncio.run(scenario()):
        assert code == 1008 and "revoked" in reason
        assert after < 5


def test_replay_sockets_that_are_not_read_hold_no_database_connection(
    start_service: object, settings: Settings
) -> None:
    """Twenty-five viewers ask a replay of a job with 60 MB of log lines and never read
    their sockets: the replica still answers at once (no pooled connection is held
    while a replay waits on a slow reader, and the replay is cut to its byte budget)."""
    port = free_port()
    proc: ServiceProcess = start_service("api", env={"SWITCHYARD_API_PORT": str(port)})  # type: ignore[operator]
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc)
    with admin(url) as http:
        job = http.post("/jobs", json={"type": "demo.echo"}).json()
    sql(
        settings,
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "SELECT $1, 1, s, now(), 'info', repeat('x', 60000) FROM generate_series(1, 1000) s",
        uuid.UUID(job["id"]),
    )
    request = (
        f"GET /jobs/stream?job_id={job['id']}&replay=true&token={VIEWER_KEY} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    silent = []
    try:
        for _ in range(25):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            assert sock.recv(12).startswith(b"HTTP/1.1 101")  # upgraded; never read again
            silent.append(sock)
        deadline = time.monotonic() + 20
        while True:  # each read needs a pooled connection
            with admin(url) as http:
                started = time.monotonic()
                answer = http.get(f"/jobs/{job['id']}", timeout=10)
                took = time.monotonic() - started
            if answer.status_code == 200 and took < 2:
                break
            assert time.monotonic() < deadline, (answer.status_code, took)
    finally:
        for sock in silent:
            sock.close()
