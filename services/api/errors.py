"""Map Switchyard's errors to HTTP answers (the only place HTTP codes are chosen)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from services.api.audit import audit_refusal
from shared.db import is_db_outage, is_transient_conflict
from shared.errors import (
    InvalidJobRequest,
    JobConflict,
    JobNotFound,
    JobRequestError,
    PermissionDenied,
    UnknownDependency,
)

log = logging.getLogger(__name__)

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
        messages.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(messages) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobRequestError)
    async def job_request_error(request: Request, exc: JobRequestError) -> JSONResponse:
        status = next((code for cls, code in STATUS_OF.items() if isinstance(exc, cls)), 422)
        await audit_refusal(request, status, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _describe_validation(exc)
        await audit_refusal(request, 422, detail)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
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
        if exc.status_code in (401, 403, 404, 405, 409, 413):
            await audit_refusal(request, exc.status_code, exc.detail)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    # Registered per class (not on Exception) so the answer is the whole story: Starlette
    # re-raises what reaches its catch-all handler.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(asyncpg.PostgresError)  # the raw pool of the submit fast path
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.InternalClientError)
    @app.exception_handler(OSError)
    @app.exception_handler(asyncio.TimeoutError)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_db_outage(exc):
            log.warning(
                "database unavailable during %s %s: %s", request.method, request.url.path, exc
            )
            return JSONResponse(
                {"detail": "the database is unavailable; nothing was changed, retry shortly"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        if is_transient_conflict(exc):
            log.warning(
                "conflict in %s %s (rolled back): %s", request.method, request.url.path, exc
            )
            return JSONResponse(
                {"detail": "the request collided with a concurrent change and was rolled "
                           "back; nothing was changed, retry it"},
                status_code=503,
                headers={"Retry-After": "1"},
            )  # fmt: skip
        log.exception("database error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the API logs"}, status_code=500)
