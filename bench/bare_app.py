"""The baseline for submit throughput: a bare FastAPI + asyncpg endpoint that inserts
one row and nothing else (no validation, audit, broker). Started by ``make bench``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request

DSN = os.environ["BARE_DSN"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(DSN, min_size=4, max_size=10)
    async with app.state.pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bare_jobs (id bigserial PRIMARY KEY, type text, payload jsonb)"
        )
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/jobs", status_code=201)
async def submit(request: Request) -> dict[str, int]:
    body = await request.json()
    async with request.app.state.pool.acquire() as conn:
        job_id = await conn.fetchval(
            "INSERT INTO bare_jobs (type, payload) VALUES ($1, $2::jsonb) RETURNING id",
            body.get("type"),
            "{}",
        )
    return {"id": job_id}
