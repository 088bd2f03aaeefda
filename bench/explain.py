"""Build a jobs table of N rows (default 1M) and print the plans of the hot queries.

    python -m bench.explain [--rows 1000000] [--keep]

Uses its own database (``swy_explain``). The rows are shaped like a busy system's
history: most jobs finished, a few thousand ready, pending, retrying and running.
The output is what docs/database.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncpg

from bench.databases import create_migrated, drop
from bench.scale import LOAD

DB = "swy_explain"


def queries() -> dict[str, tuple[str, list[object]]]:
    """Title -> (statement, arguments): the statements the services run."""
    from shared.jobs import sql
    from shared.jobs.listing import JobSelection, page_query
    from shared.jobs.reads import encode_cursor
    from shared.states import JobStatus

    cursor = encode_cursor(
        SimpleNamespace(created_at=datetime.now(UTC), id=uuid.UUID(int=2**128 - 1))
    )
    return {
        "claim (heads of the ready queue, per priority)": (sql.CLAIM_READY_HEADS, [200]),
        "due delayed / retrying jobs": (sql.DUE_JOBS, [500]),
        "list page, newest first, no filter": page_query(JobSelection(), limit=101, cursor=cursor),
        "list page, status = failed": page_query(
            JobSelection(status=[JobStatus.FAILED]), limit=101, cursor=cursor
        ),
        "list page, type = etl.load": page_query(
            JobSelection(type="etl.load"), limit=101, cursor=None
        ),
        "idempotency key lookup": (
            "SELECT * FROM jobs WHERE idempotency_key IN ('key-5400000')",
            [],
        ),
    }


async def main(rows: int, keep: bool) -> None:
    conn = await asyncpg.connect(await create_migrated(DB))
    start = time.monotonic()
    await conn.execute(LOAD, 6_000_000 - rows + 1, 6_000_000, False)  # the newest `rows` rows
    await conn.execute("VACUUM ANALYZE jobs, ready_jobs")
    print(f"-- loaded {rows:,} jobs in {time.monotonic() - start:.1f} s")
    counts = await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY 1 ORDER BY 1")
    print("-- " + ", ".join(f"{r['status']}: {r['count']:,}" for r in counts))
    for title, (statement, args) in queries().items():
        plan = await conn.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) {statement}", *args
        )
        print(f"\n### {title}\n")
        print("```")
        for line in plan:
            print(line[0])
        print("```")
    await conn.close()
    if not keep:
        await drop(DB)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ns = parser.parse_args()
    asyncio.run(main(ns.rows, ns.keep))
