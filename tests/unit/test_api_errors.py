"""A deadlock or serialization failure answers 503 (retry), not 500."""

from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError

from services.api.errors import install_error_handlers


def app_raising(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/boom")
    async def boom() -> None:
        raise exc

    return app


async def post(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.post("/boom")


async def test_deadlock_on_the_raw_pool_is_retryable() -> None:
    r = await post(app_raising(asyncpg.exceptions.DeadlockDetectedError("deadlock detected")))
    assert r.status_code == 503 and "retry" in r.json()["detail"]
    assert r.headers["retry-after"] == "1"


async def test_serialization_failure_through_sqlalchemy_is_retryable() -> None:
    orig = asyncpg.exceptions.SerializationError("could not serialize access")
    wrapped = DBAPIError("UPDATE jobs ...", {}, orig)
    wrapped.__cause__ = orig
    assert (await post(app_raising(wrapped))).status_code == 503


async def test_other_database_errors_stay_500() -> None:
    r = await post(app_raising(asyncpg.exceptions.UndefinedColumnError("no such column")))
    assert r.status_code == 500
