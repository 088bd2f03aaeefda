"""A client that does not read its answer holds no pooled connection (a real server,
a raw socket that never reads)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, wait_for
from tests.integration.conftest import served


async def test_an_unread_answer_holds_no_pooled_connection(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Seen failing: a request's session closed only once its answer was sent, and a
    request behind a large unread page held its connection for ever (uvicorn waits to
    write with no deadline). A review helper's finding."""
    big = {"blob": "x" * 250_000}  # 60 of them: a 15 MB page, more than TCP buffers hold
    for _ in range(20):
        r = await client.post(
            "/jobs/batch", json={"jobs": [{"type": "demo.echo", "payload": big}] * 3}
        )
        assert r.status_code == 201, r.text
    pool = app.state.engine.pool
    async with served(app) as address:
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # A large page, then another request behind it on the same connection: the
            # second is read while the first is still unsent, and waits to be written.
            for limit in (100, 1):
                writer.write(f"GET /jobs?limit={limit} HTTP/1.1\r\nHost: {host}\r\n"
                             f"Authorization: Bearer {ADMIN_KEY}\r\n\r\n".encode())  # fmt: skip
            await writer.drain()
            # The answer has begun (the page was read), and is then left unread.
            assert (await reader.readexactly(12)) == b"HTTP/1.1 200"

            async def connection_back() -> bool:
                return pool.checkedout() == 0

            await wait_for(connection_back, timeout=10, what="the pooled connection back")
            assert not reader.at_eof()  # the answer is still unread, the socket open
        finally:
            writer.close()
