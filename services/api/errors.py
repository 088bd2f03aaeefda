"""Map Switchyard's errors to HTTP answers (the only place HTTP codes are chosen)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from services.api.audit import audit_refusal
from services.api.middleware import TRY_AGAIN_LATER, close_reason
from shared.db import is_db_outage, is_transient_conflict
from shared.errors import (
    InvalidJobRequest,
    JobConflict,
    JobNotFound,
    JobRequestError,
    PermissionDenied,
    UnknownDependency,
)
from shared.jobs.bulk import BulkInterrupted
from shared.jsonvalues import printable

log = logging.getLogger(__name__)

INTERNAL_ERROR = 1011  # a WebSocket's close code for an unexpected error

STATUS_OF: dict[type[JobRequestError], int] = {
    InvalidJobRequest: 422,
    UnknownDependency: 404,
    JobNotFound: 404,
    JobConflict: 409,
    PermissionDenied: 403,
}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _describe_validation(exc: RequestValidationError) -> str:
    messages = []
    for err in exc.errors():
        where = _loc(tuple(err.get("loc", ())))
        message = err.get("msg", "invalid")
        if err.get("type") == "string_unicode":
            message += " (it holds a lone surrogate such as \\ud800: send valid Unicode)"
        messages.append(f"{where}: {message}")
    # A location is the client's own field name: it may hold a NUL or a lone surrogate,
    # which neither the JSON answer nor the audit row could carry.
    return printable("; ".join(messages) or "invalid request")


def _printable_detail(detail: Any) -> Any:
    return printable(detail) if isinstance(detail, str) else detail


def _internal_error_body(error_id: str) -> bytes:
    return orjson.dumps(
        {
            "detail": f"internal error {error_id}: nothing more is known here; the API log "
            "has the details under this id",
            "error_id": error_id,
        }
    )


def new_error_id() -> str:
    return uuid.uuid4().hex[:16]


class CatchUnexpected:
    """The outermost layer: an exception that no handler turned into an answer becomes a
    500 JSON ``{"detail", "error_id"}`` (the traceback logged under that id), and a
    WebSocket is closed with 1011 and the id, never a dropped connection or a plain-text
    page. A mutating request that ends so leaves an audit row (outcome ``error``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = closed = False

        async def watched_send(message: Message) -> None:
            nonlocal started, closed
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept",
                        "websocket.http.response.start"):  # fmt: skip
                started = True
            elif kind == "websocket.close":
                closed = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            error_id = new_error_id()
            log.error(
                "unexpected error %s in %s %s%s",
                error_id,
                scope.get("method", "WEBSOCKET"),
                printable(str(scope.get("path", ""))),
                " (after the answer had started: the client sees it cut short)"
                if started and scope["type"] == "http"
                else "",
                exc_info=exc,
            )
            await self._answer(scope, send, error_id, started=started, closed=closed)

    async def _answer(
        self, scope: Scope, send: Send, error_id: str, *, started: bool, closed: bool
    ) -> None:
        if scope["type"] == "http":
            try:  # first, like every refusal: the row is there when the client reads the 500
                await audit_refusal(Request(scope), 500, f"internal error {error_id}")
            except Exception:  # the 500 stands; its audit row is what failed
                log.exception("could not write the audit row of error %s", error_id)
        try:
            if scope["type"] == "websocket":
                if not closed:  # before accept this refuses the handshake, after it closes
                    await send({"type": "websocket.close", "code": INTERNAL_ERROR,
                                "reason": f"internal error {error_id}"})  # fmt: skip
                return
            if started:
                return  # too late for a status: the server ends the cut-short answer
            body = _internal_error_body(error_id)
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        except (OSError, RuntimeError) as exc:
            log.warning("could not answer error %s: the client is gone (%s)", error_id, exc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobRequestError)
    async def job_request_error(request: Request, exc: JobRequestError) -> JSONResponse:
        status = next((code for cls, code in STATUS_OF.items() if isinstance(exc, cls)), 422)
        message = printable(exc.message)
        await audit_refusal(request, status, message)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _describe_validation(exc)
        await audit_refusal(request, 422, detail)
        errors = [
            {
                "loc": [_printable_detail(part) for part in e.get("loc", ())],
                "msg": _printable_detail(e.get("msg")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when the JSON parser gives up (e.g. nesting too deep for
            # it): a 422 like any other unreadable body, and a message that says what.
            detail = "the body could not be parsed as JSON (is it nested too deeply?)"
            await audit_refusal(request, 422, detail)
            return JSONResponse({"detail": detail}, status_code=422)
        detail = _printable_detail(exc.detail)
        if exc.status_code in (401, 403, 404, 405, 409, 413):
            await audit_refusal(request, exc.status_code, detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(BulkInterrupted)
    async def bulk_interrupted(request: Request, exc: BulkInterrupted) -> JSONResponse:
        # Not "nothing was changed": the chunks before the failed one stay committed, and
        # the answer says exactly how many. The job.bulk audit row is already written.
        outcome = exc.outcome
        body: dict[str, Any] = {
            "detail": printable(exc.describe()),
            "partial": True,
            "dry_run": exc.dry_run,
            "matched": outcome.matched,
            "changed": outcome.changed,
            "skipped": outcome.skipped,
            "not_acted_on": outcome.untouched,
            "in_doubt": outcome.in_doubt,
            "truncated": outcome.truncated,
        }
        if is_db_outage(exc.cause) or is_transient_conflict(exc.cause):
            # Safe to send again (the SDK does, after Retry-After): a repeat acts on the
            # jobs still selected, and those already changed are no longer.
            log.warning("bulk call stopped part way in %s: %s", request.url.path, exc)
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        error_id = new_error_id()
        log.error("bulk call stopped part way, error %s", error_id, exc_info=exc.cause)
        body["detail"] = f"internal error {error_id}: " + body["detail"]
        body["error_id"] = error_id
        return JSONResponse(body, status_code=500)

    # Registered per class (not on Exception) so the answer is the whole story: Starlette
    # re-raises what reaches its catch-all handler.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(asyncpg.PostgresError)  # the raw pool of the submit fast path
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.InternalClientError)
    @app.exception_handler(OSError)
    @app.exception_handler(asyncio.TimeoutError)
    async def unexpected(request: Request, exc: Exception) -> Response | None:
        if is_db_outage(exc):
            log.warning("database unavailable during %s: %s", _what(request), exc)
            detail = "the database is unavailable; nothing was changed, retry shortly"
            return await _unavailable(request, detail, retry_after=2)
        if is_transient_conflict(exc):
            log.warning("conflict in %s (rolled back): %s", _what(request), exc)
            detail = ("the request collided with a concurrent change and was rolled back; "
                      "nothing was changed, retry it")  # fmt: skip
            return await _unavailable(request, detail, retry_after=1)
        error_id = new_error_id()
        log.exception("database error %s in %s", error_id, _what(request))
        if isinstance(request, WebSocket):
            await _close(request, INTERNAL_ERROR, f"internal error {error_id}")
            return None
        await audit_refusal(request, 500, f"internal error {error_id}")
        return Response(_internal_error_body(error_id), 500, media_type="application/json")


async def _unavailable(
    request: Request | WebSocket, detail: str, *, retry_after: int
) -> Response | None:
    """503 with Retry-After; a WebSocket is closed 1013 (try again later) with the detail."""
    if isinstance(request, WebSocket):
        await _close(request, TRY_AGAIN_LATER, detail)
        return None
    headers = {"Retry-After": str(retry_after)}
    return JSONResponse({"detail": detail}, status_code=503, headers=headers)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """A WebSocket's answer to an error: a close with the reason (an HTTP answer cannot
    follow its handshake; before the handshake, the close refuses it)."""
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # client gone
            await websocket.close(code, reason=close_reason(reason))


def _what(request: Request | WebSocket) -> str:
    """The request a log line is about; a WebSocket's handshake has no method."""
    return f"{getattr(request, 'method', 'WEBSOCKET')} {request.url.path}"
