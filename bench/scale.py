"""The scale part of ``make bench``: the scheduler's claim, a status read and write and
a list page, timed with 10k, 1M and 5M historical rows in ``jobs``; and the claim behind
100k ready jobs that fit no live worker against the claim behind none
(``run_unfittable``; alone: ``python -m bench.scale unfittable``). Apart from
``make bench``: a list page per combination of filters, some made to match nothing
(``python -m bench.scale filters 10000 5000000``).

Rows are loaded with ``generate_series`` (no client round trips), shaped like a busy
system's history (see ``bench.explain``): most jobs finished, 1% ready, and a few
pending, retrying, blocked and running. Each size has its own database, and each
operation runs ``repeat`` times per size on random rows, the sizes taking turns (one
execution each), so that the machine's noise falls on every size alike. The median is
reported in milliseconds, with its ratio to the smallest size.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg

from bench.databases import create_migrated, drop
from shared.db import GENERIC_PLANS, plan_as_the_scheduler
from shared.jobs import sql
from shared.jobs.listing import JobSelection, page_query, plans_once
from shared.jobs.reads import encode_cursor
from shared.states import JobStatus

# Rows g in [$1, $2]; the newest row (g = 6M) was created now. With ``$3``, each job is
# named after its type and a number below 1,000 (``report-123``, ``nightly-etl-7``): the
# smallest size (2,000 jobs a type) has every number too, so a prefix selects the same
# share of jobs at every size.
LOAD = """
INSERT INTO jobs (id, type, name, status, priority, payload, cpu_units, memory_mb,
                  max_attempts, retry_initial_delay, retry_backoff, retry_max_delay,
                  attempts, run_at, created_at, updated_at, ready_at, idempotency_key,
                  worker_id)
SELECT gen_random_uuid(),
       (ARRAY['demo.echo', 'demo.sleep', 'etl.load', 'ml.train', 'report.pdf'])[1 + g % 5],
       CASE WHEN $3 THEN (ARRAY['echo-', 'sleep-', 'nightly-etl-', 'train-', 'report-'])[1 + g % 5]
                         || (g / 5) % 1000 END,
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


async def _interleaved(
    conns: dict[int, asyncpg.Connection], sql: str, args: dict[int, list[tuple[Any, ...]]]
) -> dict[int, float]:
    """Median milliseconds of ``sql`` per table size. The sizes take turns, one
    execution each, so a noisy moment of the machine lands on every size alike."""
    stmts = {size: await conn.prepare(sql) for size, conn in conns.items()}
    times: dict[int, list[float]] = {size: [] for size in conns}
    for i in range(min(len(a) for a in args.values())):
        for size, stmt in stmts.items():
            t = time.perf_counter()
            await stmt.fetch(*args[size][i])
            times[size].append((time.perf_counter() - t) * 1000)
    return {size: statistics.median(ts) for size, ts in times.items()}


async def _measure(
    conns: dict[int, asyncpg.Connection], repeat: int
) -> dict[int, dict[str, float]]:
    sample, running = {}, {}
    newest = await next(iter(conns.values())).fetchval("SELECT now() + interval '1 s'")
    # The list page as the API runs it (GET /jobs: the page after a cursor).
    cursor = encode_cursor(SimpleNamespace(created_at=newest, id=uuid.UUID(int=2**128 - 1)))
    list_all = page_query(JobSelection(), limit=51, cursor=cursor)
    list_failed = page_query(JobSelection(status=[JobStatus.FAILED]), limit=51, cursor=cursor)
    for size, conn in conns.items():
        sample[size] = [(r["id"],) for r in await conn.fetch(
            "SELECT id FROM jobs TABLESAMPLE BERNOULLI (1) LIMIT $1", repeat)]  # fmt: skip
        running[size] = [
            # A worker's completion of one row, as the scheduler applies it (rolled back).
            ([r["id"]], [r["attempts"]], [r["worker_id"]], ["{}"], [None], [True], newest)
            for r in await conn.fetch(
                "SELECT id, attempts, worker_id FROM jobs WHERE status = 'running' LIMIT $1",
                repeat,
            )
        ]

    def each(*a: Any) -> dict[int, list[tuple[Any, ...]]]:
        return {size: [a] * repeat for size in conns}

    # The claim runs as the scheduler runs it: planned once (shared.db.GENERIC_PLANS).
    for conn in conns.values():
        await plan_as_the_scheduler(conn)
    # 16 heads per priority: the smallest table has 25 ready per level, so every size
    # returns the same 64 rows (the same work).
    claim = await _interleaved(conns, sql.CLAIM_READY_HEADS, each(16))
    # So are these list pages (shared.jobs.listing.plans_once).
    list_page = await _interleaved(conns, list_all[0], each(*list_all[1]))
    list_page_failed = await _interleaved(conns, list_failed[0], each(*list_failed[1]))
    for conn in conns.values():
        await conn.execute("RESET ALL")
    out = {
        "claim": claim,
        "status_read": await _interleaved(conns, STATUS_READ, sample),
        "list_page": list_page,
        "list_page_failed": list_page_failed,
    }
    transactions = [conn.transaction() for conn in conns.values()]
    for tr in transactions:
        await tr.start()
    try:
        out["status_write"] = await _interleaved(conns, sql.APPLY_SUCCESSES, running)
    finally:
        for tr in transactions:
            await tr.rollback()
    return {size: {op: round(by_size[size], 4) for op, by_size in out.items()} for size in conns}


async def _load(db: str, size: int, *, named: bool = False) -> asyncpg.Connection:
    """A fresh database ``db`` holding ``size`` jobs (``named``: with names, see
    ``LOAD``); an open connection to it."""
    conn = await asyncpg.connect(await create_migrated(db), command_timeout=3600)
    t = time.monotonic()
    # The newest rows are the last ones: g counts up to 6M.
    await conn.execute(LOAD, 6_000_000 - size + 1, 6_000_000, named)
    await conn.execute("VACUUM ANALYZE jobs, ready_jobs")
    print(f"  scale: {size:,} rows loaded in {time.monotonic() - t:.0f} s", flush=True)
    return conn


async def run_scale(sizes: list[int], repeat: int = 200) -> dict[str, Any]:
    """One database per size (loaded two at a time), then every operation timed on all
    sizes in turn."""
    prefix = f"swy_scale_{os.getpid()}"
    conns: dict[int, asyncpg.Connection] = {}
    try:
        # The largest loads beside the others (two cores).
        largest, *rest = sorted(sizes, reverse=True)
        big, others = await asyncio.gather(
            _load(f"{prefix}_{largest}", largest), _load_in_turn(prefix, rest)
        )
        conns = dict(sorted({largest: big, **others}.items()))
        by_size = await _measure(conns, repeat)
        for size, ms in (await _claim_behind_dispatched(conns, repeat)).items():
            by_size[size]["claim_behind_dispatched"] = round(ms, 4)
    finally:
        for conn in conns.values():
            await conn.close()
        await drop(*(f"{prefix}_{size}" for size in sizes))
    base = by_size[min(sizes)]
    ratios = {
        str(size): {op: round(ms / base[op], 2) if base[op] else None for op, ms in ops.items()}
        for size, ops in by_size.items()
    }
    return {
        "ms": {str(size): ops for size, ops in by_size.items()},
        "ratio_to_smallest": ratios,
        "repeat": repeat,
        "method": "one database per size; executions interleaved across sizes",
        "behind_unfittable": await run_unfittable(repeat),
    }


# The jobs dispatched since ``jobs`` was last vacuumed, as a share of its rows: autovacuum
# takes a table once a fifth of its rows changed, and each job changes twice (its
# dispatch, its completion), so up to a tenth of the rows were dispatched since.
DISPATCHED_SINCE_VACUUM = 0.1
DISPATCH_CHUNK = 2000


async def _claim_behind_dispatched(
    conns: dict[int, asyncpg.Connection], repeat: int
) -> dict[int, float]:
    """The claim at each size once a tenth of its rows' worth of jobs, ahead of the ready
    ones in claim order, were dispatched and completed since ``jobs`` was last vacuumed
    (its autovacuum off meanwhile), the ready queue vacuumed as the scheduler does every
    ``SWITCHYARD_QUEUE_VACUUM_SECONDS``: what a yard whose history is that large meets
    between two autovacuums of ``jobs``."""
    from services.scheduler.maintenance import QUEUE_VACUUM

    for size, conn in conns.items():
        await conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        # Ahead of every ready job (an older run_at), at the normal priority.
        await conn.execute(
            LOAD_READY.replace("g % 4", "2"), -2_000_000, "demo.echo",
            int(size * DISPATCHED_SINCE_VACUUM), 0.1,
        )  # fmt: skip
        ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM ready_jobs WHERE priority = 2 ORDER BY run_at, id LIMIT $1",
            int(size * DISPATCHED_SINCE_VACUUM))]  # fmt: skip
        for i in range(0, len(ids), DISPATCH_CHUNK):
            chunk = ids[i : i + DISPATCH_CHUNK]
            await conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = 'w',"
                " dispatched_at = now() WHERE id = ANY($1::uuid[])", chunk,
            )  # fmt: skip
            await conn.execute(
                "UPDATE jobs SET status = 'completed', finished_at = now()"
                " WHERE id = ANY($1::uuid[])", chunk,
            )  # fmt: skip
        await conn.execute(QUEUE_VACUUM)  # as the scheduler does
        await plan_as_the_scheduler(conn)
    try:
        return await _interleaved(
            conns, sql.CLAIM_READY_HEADS, {size: [(16,)] * repeat for size in conns}
        )
    finally:
        for conn in conns.values():
            await conn.execute("RESET ALL")


async def _load_in_turn(
    prefix: str, sizes: list[int], *, named: bool = False
) -> dict[int, asyncpg.Connection]:
    return {size: await _load(f"{prefix}_{size}", size, named=named) for size in sizes}


# ------------------------------------------------------------------- the list's filters together

# Combinations that match nothing though each filter alone matches many: the loaded
# history made so that one type runs only at normal priority, one never fails and the
# lowest priority never fails.
NOWHERE = [
    "UPDATE jobs SET priority = 2 WHERE type = 'etl.load' AND priority <> 2",
    "UPDATE jobs SET status = 'completed' WHERE type = 'report.pdf' AND status = 'failed'",
    "UPDATE jobs SET status = 'completed' WHERE priority = 3 AND status = 'failed'",
]


def _filter_pages(newest: datetime) -> dict[str, JobSelection]:
    from shared.schemas import Priority

    hour_ago = newest - timedelta(hours=1)

    failed, completed, ready = JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.READY
    return {
        "all": JobSelection(),
        "failed": JobSelection(status=[failed]),
        "priority": JobSelection(priority=Priority.HIGH),
        "type": JobSelection(type="etl.load"),
        "type+priority": JobSelection(type="etl.load", priority=Priority.NORMAL),
        "type+priority, none": JobSelection(type="etl.load", priority=Priority.CRITICAL),
        "failed+type, none": JobSelection(status=[failed], type="report.pdf"),
        "failed+priority, none": JobSelection(status=[failed], priority=Priority.LOW),
        "completed+type+priority, none": JobSelection(
            status=[completed], type="etl.load", priority=Priority.CRITICAL
        ),
        "ready+type": JobSelection(status=[ready], type="demo.echo"),
        "type, last hour": JobSelection(type="etl.load", created_after=hour_ago),
        "type+priority, last hour, none": JobSelection(
            type="etl.load", priority=Priority.CRITICAL, created_after=hour_ago
        ),
        # A name prefix (read for at most SWITCHYARD_MAX_NAME_SEARCH_SECONDS by the API):
        # a thousandth of a type's jobs, a type's, a ninth of a type's, and with other
        # filters none.
        "name, few": JobSelection(name_prefix="report-123"),
        "name": JobSelection(name_prefix="nightly"),
        "name, a ninth": JobSelection(name_prefix="report-1"),
        "name+type, none": JobSelection(name_prefix="report-", type="etl.load"),
        "name+priority, none": JobSelection(name_prefix="nightly", priority=Priority.CRITICAL),
        "failed+name, none": JobSelection(status=[failed], name_prefix="report-"),
    }


async def run_filters(sizes: list[int], repeat: int = 21) -> dict[str, Any]:
    """A list page (the first, 51 rows) per combination of filters, on one database per
    size loaded as ``run_scale`` loads them and then made so that some combinations
    match nothing (``NOWHERE``); executions interleaved across sizes."""
    prefix = f"swy_filters_{os.getpid()}"
    conns: dict[int, asyncpg.Connection] = {}
    try:
        conns = await _load_in_turn(prefix, sizes, named=True)
        for conn in conns.values():
            for statement in NOWHERE:
                await conn.execute(statement)
            await conn.execute("VACUUM ANALYZE jobs")
        newest = await next(iter(conns.values())).fetchval("SELECT now() + interval '1 s'")
        cursor = encode_cursor(SimpleNamespace(created_at=newest, id=uuid.UUID(int=2**128 - 1)))
        ms: dict[str, dict[int, float]] = {}
        for name, selection in _filter_pages(newest).items():
            statement, args = page_query(selection, limit=51, cursor=cursor)
            # Planned as GET /jobs plans it (shared.jobs.listing.plans_once).
            mode = GENERIC_PLANS["plan_cache_mode"] if plans_once(selection) else "auto"
            for conn in conns.values():
                await conn.execute(f"SET plan_cache_mode = {mode}")
            ms[name] = await _interleaved(
                conns, statement, {s: [tuple(args)] * repeat for s in conns}
            )
            print(f"  {name}: " + ", ".join(f"{s:,}: {v:.2f} ms" for s, v in ms[name].items()))
    finally:
        for conn in conns.values():
            await conn.close()
        await drop(*(f"{prefix}_{size}" for size in sizes))
    smallest = min(sizes)
    return {
        "ms": {
            name: {str(s): round(v, 3) for s, v in by_size.items()} for name, by_size in ms.items()
        },
        "ratio_to_smallest": {
            name: {str(s): round(v / by_size[smallest], 2) for s, v in by_size.items()}
            for name, by_size in ms.items()
        },
        "repeat": repeat,
        "method": "one database per size, some combinations made empty; the page after a "
        "cursor past the newest job, as GET /jobs runs it; executions interleaved, medians",
    }


# ------------------------------------------------------------------- behind jobs that fit nowhere

# ``$3`` ready jobs needing ``$4`` cpu units, spread over the four priorities, older than
# anything else (they sit at the head of every priority), starting at row ``$1``, type $2.
LOAD_READY = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_at,
                  updated_at, ready_at)
SELECT gen_random_uuid(), $2, 'ready', g % 4, '{}'::jsonb, $4, 16, 3, 1, 2, 300,
       now() - make_interval(secs => 1000000 - g), now(), now(), now()
FROM generate_series($1::int, $1::int + $3::int - 1) AS g
"""
WORKER = ("demo.echo", 4.0, 4096)  # the live fleet: one 4-cpu worker running demo.echo


async def run_unfittable(
    repeat: int = 200, unfittable: int = 100_000, fitting: int = 10_000
) -> dict[str, Any]:
    """The claim behind ``unfittable`` ready jobs that no live worker could run (64 cpu
    units; the fleet is one 4-cpu worker) against the claim with none of them, on two
    databases holding the same ``fitting`` ready jobs behind. The unfittable ones are
    parked first as the scheduler parks them (timed: the one-off cost); then both claims
    are timed, executions interleaved. Also: the widened claim (``past the room``) behind
    ``unfittable`` jobs that fit the worker but not its room now, which is not parked and
    walks past them, and the un-parking once a worker that fits them all joins."""
    from services.scheduler.dispatch import PARK_WINDOW, UNPARK_CHUNK
    from services.scheduler.placement import WorkerView, fits_nowhere_templates
    from shared.jobs import parking

    prefix = f"swy_unfit_{os.getpid()}"
    names = {"none": f"{prefix}_none", "parked": f"{prefix}_parked", "room": f"{prefix}_room"}
    conns: dict[str, asyncpg.Connection] = {}
    out: dict[str, Any] = {"unfittable": unfittable, "fitting": fitting, "repeat": repeat}
    try:
        for label, db in names.items():
            conns[label] = conn = await _load(db, 0)
            if label != "none":  # the ones ahead: fit nowhere, or not in the room now
                cpu = 64.0 if label == "parked" else WORKER[1]
                await conn.execute(LOAD_READY, 0, "demo.echo", unfittable, cpu)
            await conn.execute(LOAD_READY, unfittable, "demo.echo", fitting, 0.1)
        fleet = [WorkerView("w", WORKER[1], WORKER[2], 4, frozenset({WORKER[0]}))]
        reasons, other_reason = fits_nowhere_templates(fleet)
        t = time.perf_counter()
        parked = 0
        while True:  # as the scheduler parks them (Dispatcher._park)
            n = await parking.park_unfittable(
                conns["parked"], [WORKER], window=PARK_WINDOW, reasons=reasons,
                other_reason=other_reason,
            )  # fmt: skip
            parked += n
            if n < PARK_WINDOW:
                break
        out["park_seconds"] = round(time.perf_counter() - t, 3)
        out["parked"] = parked
        for conn in conns.values():
            await conn.execute("VACUUM ANALYZE jobs, ready_jobs")
            await plan_as_the_scheduler(conn)
        per_priority = [(32,)] * repeat
        claim = await _interleaved(
            {0: conns["none"], unfittable: conns["parked"]},
            sql.CLAIM_READY_HEADS,
            {0: per_priority, unfittable: per_priority},
        )
        # The room left now on the busy worker: 1 cpu unit; the 4-cpu jobs do not fit it.
        room = [(32, [WORKER[0]], [1.0], [WORKER[2]])] * repeat
        widened = await _interleaved(
            {0: conns["none"], unfittable: conns["room"]},
            sql.CLAIM_READY_HEADS_AND_FITTING,
            {0: room, unfittable: room},
        )
        out["claim_ms"] = {"none": round(claim[0], 4), "parked": round(claim[unfittable], 4)}
        out["claim_ratio"] = round(claim[unfittable] / claim[0], 2)
        out["claim_past_the_room_ms"] = {
            "none": round(widened[0], 4),
            "not_in_room": round(widened[unfittable], 4),
        }
        out["claim_past_the_room_ratio"] = round(widened[unfittable] / widened[0], 2)
        t = time.perf_counter()
        out["unparked"] = await parking.unpark_fitting(
            conns["parked"], [WORKER, ("demo.echo", 64.0, 4096)], chunk=UNPARK_CHUNK
        )
        out["unpark_seconds"] = round(time.perf_counter() - t, 3)
    finally:
        for conn in conns.values():
            await conn.close()
        await drop(*names.values())
    out["method"] = (
        "three databases (none ahead; parked ahead; not in the room ahead), the same "
        "fitting jobs behind; claims as the scheduler plans them, executions interleaved"
    )
    return out


if __name__ == "__main__":
    import json

    if sys.argv[1:] == ["unfittable"]:  # only the claim behind jobs that fit nowhere
        print(json.dumps(asyncio.run(run_unfittable()), indent=2))
    elif sys.argv[1:2] == ["filters"]:  # list pages by combinations of filters
        sizes = [int(s) for s in (sys.argv[2:] or ["10000", "1000000"])]
        print(json.dumps(asyncio.run(run_filters(sizes)), indent=2))
    else:
        sizes = [int(s) for s in (sys.argv[1:] or ["10000", "1000000"])]
        print(json.dumps(asyncio.run(run_scale(sizes)), indent=2))
