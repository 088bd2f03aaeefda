"""The API's connections: a request's line and headers are bounded in size and read
within a deadline, and a WebSocket handshake the server cannot read is answered.

uvicorn holds a connection for as long as its client takes to send a request, and reads
a request line and headers of any size: one client could hold thousands of connections
by sending half a request line on each (or nothing, or a blank line after a request), or
send megabytes of headers, all without a key. Here a request's line and headers must
arrive within ``HEADERS_SECONDS`` of its first byte (of the connection, for the first
request); past that the connection is closed. uvicorn's keep-alive timeout still closes
a connection idle between requests. A URL over ``MAX_URL_BYTES`` is answered 414, a
header over ``MAX_HEADER_BYTES``, more than ``MAX_HEADERS`` of them or more than
``MAX_HEADERS_BYTES`` in all 431, and the connection closed.

uvicorn's WebSocket protocol (the websockets library's sans-I/O parser) hands the
application a handshake once it has parsed it again. One the library cannot parse
(a header line just under the limits above but over its own) never reached the
application, and uvicorn wrote nothing of the 431 the library prepared: the client
waited for ever with its connection open. Here the client gets what the library
prepared, and the connection is closed.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

HEADERS_SECONDS = 10.0
MAX_URL_BYTES = 8 * 1024  # the WebSocket library's bound on a request line, for both
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS = 128
MAX_HEADERS_BYTES = 64 * 1024


class _TooLarge(Exception):
    """Stops the parser (which then reports a bad request) for a refusal of our own."""


class HttpProtocol(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None
    # True from a connection's start, and after a response with nothing pipelined,
    # until a request's headers are complete: the bytes that come are a request's first.
    _awaiting_request = True
    _headers_bytes = 0
    _refusal: tuple[HTTPStatus, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # stops uvicorn's keep-alive timer: ours takes over
        if self._awaiting_request and self._deadline is None:
            self._start_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._refuse(HTTPStatus.REQUEST_URI_TOO_LONG, f"the URL is over {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._headers_bytes += len(name) + len(value)
        if len(name) + len(value) > MAX_HEADER_BYTES:
            why = f"a header is over {MAX_HEADER_BYTES} bytes"
        elif len(self.headers) > MAX_HEADERS:
            why = f"more than {MAX_HEADERS} headers"
        elif self._headers_bytes > MAX_HEADERS_BYTES:
            why = f"the headers are over {MAX_HEADERS_BYTES} bytes"
        else:
            return
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, why)

    def on_headers_complete(self) -> None:
        self._awaiting_request = False
        self._stop_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        self._awaiting_request = not pipelined

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, why = self._refusal
        body = f"{why}: the request was not read\n".encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        self._refusal = (status, why)
        raise _TooLarge(why)  # uvicorn's data_received answers through send_400_response

    def _start_deadline(self) -> None:
        self._deadline = self.loop.call_later(HEADERS_SECONDS, self._headers_late)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being served (and a pipelined one waits behind it, unread):
            # it is answered, then the connection closed.
            self.cycle.keep_alive = False
        elif not self.transport.is_closing():
            self.transport.close()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            self.transport.close()
