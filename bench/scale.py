"""The scale part of ``make bench``: the scheduler's claim, a status read and write and
a list page, timed with 10k, 1M and 5M historical rows in ``jobs``.

Rows are loaded with ``generate_series`` (no client round trips), shaped like a busy
system's history (see ``bench.explain``): most jobs finished, 1% ready, and a few
pending, retrying, blocked and running. Each operation is run ``repeat`` times on
random rows; the median is reported in milliseconds, with its ratio to the smallest size.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from shared import queries

ROOT = Path(__file__).resolve().parent.parent
ADMIN = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# Rows g in [$1, $2]; the newest row (g = 6M) was created now.
LOAD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, attempts, run_at,
                  created_at, updated_at, ready_at, idempotency_key, worker_id)
SELECT gen_random_uuid(),
       (ARRAY['demo.echo', 'demo.sleep', 'etl.load', 'ml.train', 'report.pdf'])[1 + g % 5],
       CASE WHEN g % 1000 < 940 THEN 'completed'
            WHEN g % 1000 < 970 THEN 'failed'
            WHEN g % 1000 < 975 THEN 'cancelled'
            WHEN g % 1000 < 985 THEN 'ready'
            WHEN g % 1000 < 990 THEN 'pending'
            WHEN g % 1000 < 993 THEN 'retrying'
            WHEN g % 1000 < 996 THEN 'blocked'
            ELSE 'running' END,
       g % 4, '{"n": 1}'::jsonb, 0.1, 16, 3, 1, 2, 300, 1,
       now() - make_interval(secs => (6000000 - g) * 0.05)
             + CASE WHEN g % 1000 BETWEEN 985 AND 989 THEN interval '1 hour' ELSE interval '0' END,
       now() - make_interval(secs => (6000000 - g) * 0.05),
       now() - make_interval(secs => (6000000 - g) * 0.05),
       now() - make_interval(secs => (6000000 - g) * 0.05),
       CASE WHEN g % 3 = 0 THEN 'key-' || g END,
       CASE WHEN g % 1000 >= 996 THEN 'worker-' || (g % 8) END
FROM generate_series($1::int, $2::int) AS g
"""

STATUS_READ = "SELECT id, status, attempts, worker_id, updated_at FROM jobs WHERE id = $1"
# What applying a worker's completion does to one row (rolled back after timing).
STATUS_WRITE = """
UPDATE jobs SET status = 'completed', result = '{}'::jsonb, finished_at = now(),
    lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempts = 1
"""


async def _timed(conn: asyncpg.Connection, sql: str, args: list[tuple[Any, ...]]) -> float:
    """Median milliseconds of ``sql`` over ``args`` (one execution per tuple)."""
    stmt = await conn.prepare(sql)
    times = []
    for a in args:
        t = time.perf_counter()
        await stmt.fetch(*a)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def _measure(conn: asyncpg.Connection, repeat: int) -> dict[str, float]:
    sample = [r["id"] for r in await conn.fetch(
        "SELECT id FROM jobs TABLESAMPLE BERNOULLI (1) LIMIT $1", repeat)]  # fmt: skip
    running = [r["id"] for r in await conn.fetch(
        "SELECT id FROM jobs WHERE status = 'running' LIMIT $1", repeat)]  # fmt: skip
    newest = await conn.fetchrow("SELECT now() + interval '1 s' AS ts")
    cursor = (newest["ts"], "ffffffff-ffff-ffff-ffff-ffffffffffff")
    out = {
        # 16 heads per priority: the smallest table has 25 ready per level, so every
        # size returns the same 64 rows (the same work).
        "claim": await _timed(conn, queries.CLAIM_READY_HEADS, [(16,)] * repeat),
        "status_read": await _timed(conn, STATUS_READ, [(i,) for i in sample]),
        "list_page": await _timed(conn, queries.LIST_PAGE, [(None, *cursor, 51)] * repeat),
        "list_page_failed": await _timed(
            conn, queries.LIST_PAGE, [("failed", *cursor, 51)] * repeat
        ),
    }
    tr = conn.transaction()
    await tr.start()
    try:
        out["status_write"] = await _timed(conn, STATUS_WRITE, [(i,) for i in running])
    finally:
        await tr.rollback()
    return {k: round(v, 4) for k, v in out.items()}


async def run_scale(sizes: list[int], repeat: int = 200) -> dict[str, Any]:
    db = f"swy_scale_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    url = ADMIN.rsplit("/", 1)[0] + f"/{db}"
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": url.replace("postgresql://", "postgresql+asyncpg://"),
            },
            check=True,
            capture_output=True,
        )
        conn = await asyncpg.connect(url, command_timeout=3600)
        by_size: dict[str, dict[str, float]] = {}
        loaded = 0
        for size in sorted(sizes):
            t = time.monotonic()
            # The newest rows are the last ones: g counts up to 6M.
            await conn.execute(LOAD, 6_000_000 - size + 1, 6_000_000 - loaded)
            loaded = size
            await conn.execute("VACUUM ANALYZE jobs")
            print(f"  scale: {size:,} rows loaded in {time.monotonic() - t:.0f} s", flush=True)
            by_size[str(size)] = await _measure(conn, repeat)
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    base = by_size[str(min(sizes))]
    ratios = {
        size: {op: round(ms / base[op], 2) if base[op] else None for op, ms in ops.items()}
        for size, ops in by_size.items()
    }
    return {"ms": by_size, "ratio_to_smallest": ratios, "repeat": repeat}


if __name__ == "__main__":
    import json

    sizes = [int(s) for s in (sys.argv[1:] or ["10000", "1000000"])]
    print(json.dumps(asyncio.run(run_scale(sizes)), indent=2))
