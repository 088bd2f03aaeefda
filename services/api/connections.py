"""The API's connections: a request is read within a deadline, and a WebSocket handshake
the server cannot read is answered and closed.

uvicorn holds a connection for as long as its client takes to send a request: one that
opens thousands of connections and sends half a request line on each (or nothing) would
hold a file descriptor and a protocol object each, without a key, for ever. A request's
line and headers must arrive within ``HEADERS_SECONDS`` of its first byte (or of the
connection, for its first request); past that the connection is closed. uvicorn's own
keep-alive timeout still closes a connection idle between requests.

uvicorn's WebSocket protocol (the websockets library's sans-I/O parser) hands the
application a handshake once it has parsed it. A request line longer than 8 KiB
(``/jobs/stream?job_id=…`` repeated), a header line too long, too many headers or a
request that is not HTTP never parse: the library then prepares a 414, a 431 or an end
of stream, but uvicorn only writes what the library prepared after a parsed request,
so the client waited for ever and the connection stayed open. Here the client gets
what the library prepared, and the connection is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

HEADERS_SECONDS = 10.0


class HttpProtocol(HttpToolsProtocol):
    _headers_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_deadline is None:
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._headers_deadline = self.loop.call_later(HEADERS_SECONDS, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None

    def _headers_late(self) -> None:
        self._headers_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            self.transport.close()
