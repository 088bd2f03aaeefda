"""Pure ASGI middleware: refuse request bodies over ``SWITCHYARD_MAX_BODY_BYTES`` with 413.

The limit is enforced while the body is read (a lying or absent Content-Length does not
help), by raising an HTTPException that the app's handlers turn into a 413 with its
audit row.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"request body is larger than the limit of {self.max_bytes} bytes "
            "(SWITCHYARD_MAX_BODY_BYTES); split the request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        declared_too_large = (
            declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        )
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
