"""The bench's light load generator (bench/loadgen.py) against a real uvicorn server:
each request gets its own answer, keep-alive connections are reused, and a connection
the server closes is replaced, not reused."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from bench.loadgen import LightClient
from tests.conftest import asgi_body, wait_for

connections_seen: set[tuple[str, int]] = set()


async def echo_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Answers 201 with the request's body, its path and its client's port; a request
    to /close is answered with ``Connection: close``."""
    if scope["type"] != "http":
        return
    body = await asgi_body(receive)
    connections_seen.add(scope["client"])
    headers = [(b"content-type", b"application/json")]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    answer = json.dumps({"path": scope["path"], "body": body.decode(), "port": scope["client"][1]})
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": answer.encode()})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(echo_app, host="127.0.0.1", port=free, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    await wait_for(started, timeout=10, what="the echo server")
    connections_seen.clear()
    yield free
    server.should_exit = True
    await task


async def test_each_request_gets_its_own_answer_over_few_connections(port: int) -> None:
    client = LightClient("127.0.0.1", port, {"Authorization": "Bearer k"}, limit=4)
    bodies = [json.dumps({"i": i}).encode() for i in range(200)]
    answers = await asyncio.gather(*(client.post("/jobs", b) for b in bodies))
    assert [status for status, _ in answers] == [201] * 200
    assert [json.loads(json.loads(raw)["body"]) for _, raw in answers] == [
        {"i": i} for i in range(200)
    ]
    assert len(connections_seen) <= 4  # reused, never more than the limit
    client.close()


async def test_a_connection_the_server_closes_is_not_reused(port: int) -> None:
    client = LightClient("127.0.0.1", port, {}, limit=1)
    status, raw = await client.post("/close", b"{}")
    assert status == 201
    first = json.loads(raw)["port"]
    status, raw = await client.post("/jobs", b"{}")
    assert status == 201 and json.loads(raw)["port"] != first
    client.close()
