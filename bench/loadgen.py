"""A light HTTP/1.1 load generator for the latency runs.

The load generator shares the machine's two cores with the stack it measures, so what
it costs per request is taken from the yard: aiohttp costs ~0.4 ms of CPU per request
here, httpx 1.3-3 ms. This client is asyncio protocols over keep-alive connections,
each request written as prepared bytes, each response parsed by httptools (the C
parser uvicorn uses): a fraction of aiohttp's cost (docs/performance-history.md). It does what
the latency runs need and nothing more: POST a JSON body, read the status and body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httptools

# Idle connections older than this are closed rather than reused: uvicorn closes a
# keep-alive connection after 5 s idle, and one closed under a request fails it.
IDLE_REUSE_SECONDS = 2.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()
        self.closed = False
        self.keep_alive = True
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))
            self.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        result = (self.parser.get_status_code(), bytes(self.body))
        self.body.clear()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection closed: {exc}"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LightClient:
    """POST JSON to one server over at most ``limit`` keep-alive connections."""

    def __init__(
        self, host: str, port: int, headers: Mapping[str, str], *, limit: int = 256
    ) -> None:
        self._host, self._port = host, port
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """The response's status and body."""
        async with self._slots:
            conn = await self._connection()
            request = (
                (
                    f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                ).encode("latin-1")
                + self._headers
                + b"\r\n"
                + body
            )
            conn.waiter = asyncio.get_running_loop().create_future()
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                return await conn.waiter
            finally:
                conn.waiter = None
                if conn.closed or not conn.keep_alive:
                    conn.close()
                else:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: a small set stays warm
            if not conn.closed and time.monotonic() - conn.idle_since < IDLE_REUSE_SECONDS:
                return conn
            conn.close()
        _, conn = await asyncio.get_running_loop().create_connection(
            _Connection, self._host, self._port
        )
        return conn

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
