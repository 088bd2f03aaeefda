"""``/healthz``: liveness plus database and broker reachability (no key needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    name="health",
    responses={503: {"description": "database or broker unreachable"}},
)
async def healthz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure here means "not reachable"; report it
        checks["database"] = f"unavailable: {type(exc).__name__}"
    broker = state.broker
    checks["broker"] = "ok" if broker is not None and await broker.ping() else "unavailable"
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", **checks},
        status_code=200 if healthy else 503,
    )
