"""Housekeeping beside the cycle: the retention sweep, the ready queue's vacuum, a
vacuum of ``jobs`` where the server does not autovacuum, and the monitoring messages.

The sweep and the vacuum run as background tasks (they can take long, and the cycle
must not wait for them), at most one of each at a time; the leader cancels them when
it stops leading. Monitoring is two messages, published through the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from services.scheduler.database import Database
from services.scheduler.fleet import Fleet
from shared.db import RAW_DB_ERRORS
from shared.jobs import retention
from shared.messages import MonitoringQueue, MonitoringResource, WorkerCapacity
from shared.outbox import Outbox
from shared.settings import Settings
from shared.stats import queue_depth

log = logging.getLogger("switchyard.scheduler")

# How often the scheduler asks, between vacuums (each of which analyzes too), whether
# ``jobs`` needs analyzing on a server without autovacuum: when more rows were inserted
# since the last analyze than autovacuum's threshold (50 + 10 % of the rows the
# statistics know). A table that fills in seconds, or a burst of new ready jobs into a
# table of finished ones, must not be planned for with statistics that saw none of
# them. Inserts, not every change: a busy yard updates each job twice more (dispatch,
# completion), and analyzing on those ran an ANALYZE every 2 s, a fifth of the
# database's CPU in an end-to-end run; they wait for the next vacuum.
ANALYZE_CHECK_SECONDS = 2.0
JOBS_CHANGES = """
SELECT s.n_tup_ins AS inserted, s.n_mod_since_analyze AS changed,
       50 + 0.1 * greatest(c.reltuples, 0) AS threshold
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.relid = 'jobs'::regclass
"""


JOBS_INSERTED = "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"
QUEUE_VACUUM = "VACUUM (INDEX_CLEANUP ON, TRUNCATE OFF) ready_jobs"


class Maintenance:
    def __init__(self, settings: Settings, db: Database, outbox: Outbox, fleet: Fleet) -> None:
        self._settings = settings
        self._db = db
        self._outbox = outbox
        self._fleet = fleet
        self._last_prune = 0.0  # the first sweep runs soon after taking over
        self._prune_task: asyncio.Task[None] | None = None
        self._last_vacuum = time.monotonic()
        self._vacuum_task: asyncio.Task[None] | None = None
        self._server_vacuums = False
        self._last_analyze_check = 0.0
        self._last_queue_vacuum = time.monotonic()
        self._queue_vacuum_task: asyncio.Task[None] | None = None
        # jobs' insert count when it was last analyzed (None: not known since taking over
        # or since the last vacuum; then all changes since that analyze count)
        self._inserted_at_analyze: int | None = None
        self._last_monitoring = 0.0

    def start_due_tasks(self) -> None:
        """Start the retention sweep and the vacuums if their time has come."""
        self._start_retention()
        self._start_vacuum()
        self._start_queue_vacuum()

    async def stop(self) -> None:
        """Cancel the background tasks (the next leader runs its own)."""
        for task in (self._vacuum_task, self._queue_vacuum_task, self._prune_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------ retention

    def _start_retention(self) -> None:
        """Every ``SWITCHYARD_RETENTION_SWEEP_SECONDS``, in the background: delete what
        finished more than ``SWITCHYARD_RETENTION_DAYS`` ago, audit rows older than
        ``SWITCHYARD_AUDIT_RETENTION_DAYS`` (0: never, each), and the rows of workers
        gone for ``retention.WORKERS_KEPT``."""
        settings = self._settings
        now = time.monotonic()
        if now - self._last_prune < settings.retention_sweep_seconds:
            return
        if self._prune_task is not None and not self._prune_task.done():
            return
        self._last_prune = now
        self._prune_task = asyncio.create_task(self._prune(), name="retention")

    async def _prune(self) -> None:
        settings = self._settings
        every = settings.retention_sweep_seconds
        sweeps = (
            ("", "job(s) finished", settings.retention_days, retention.prune_finished),
            ("audit ", "row(s) written", settings.audit_retention_days, retention.prune_audit),
            ("worker ", "worker row(s) last heard of", retention.WORKERS_KEPT.days,
             retention.prune_workers),
        )  # fmt: skip
        for what, rows, days, prune in sweeps:
            if days <= 0:
                continue
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                n = await prune(self._db.pool, older_than=cutoff)
            except RAW_DB_ERRORS as exc:
                log.warning("%sretention sweep failed (next one in %g s): %s", what, every, exc)
            else:
                if n:
                    log.info("%sretention: deleted %d %s before %s", what, n, rows,
                             cutoff.isoformat())  # fmt: skip

    # ------------------------------------------------------------ vacuum

    def _start_vacuum(self) -> None:
        """Vacuum (and analyze) ``jobs`` in the background when the server's autovacuum
        is off, and analyze it in between as soon as enough rows were inserted.

        Every dispatch and report writes a new row version; the old ones stay in every
        index of ``jobs`` until a vacuum, and the table only grows. And a plan made with
        the statistics of a table that was nearly empty takes "status = 'ready'" for one
        row, so looking up a few ready jobs by id walks every ready entry of the status
        index (about 1 ms a row behind 20,000 ready jobs): statistics must follow a table
        that fills in seconds. PostgreSQL's autovacuum does both on its own when it is on
        (the default, and in docker-compose.yml)."""
        every = self._settings.vacuum_seconds
        now = time.monotonic()
        if every <= 0 or self._server_vacuums:
            return
        if self._vacuum_task is not None and not self._vacuum_task.done():
            return
        if now - self._last_vacuum >= every:
            self._last_vacuum = self._last_analyze_check = now
            self._vacuum_task = asyncio.create_task(self._vacuum(), name="vacuum")
        elif now - self._last_analyze_check >= ANALYZE_CHECK_SECONDS:
            self._last_analyze_check = now
            self._vacuum_task = asyncio.create_task(self._analyze_if_inserted(), name="analyze")

    async def _analyze_if_inserted(self) -> None:
        """ANALYZE ``jobs`` when more rows were inserted since it was last analyzed than
        autovacuum's threshold (``JOBS_CHANGES``)."""
        try:
            if await self._db.pool.fetchval("SELECT current_setting('autovacuum')") == "on":
                self._server_vacuums = True  # the server does it: never again
                return
            row = await self._db.pool.fetchrow(JOBS_CHANGES, timeout=5)
            if row is None:
                return
            baseline = self._inserted_at_analyze
            since = row["changed"] if baseline is None else row["inserted"] - baseline
            if since > row["threshold"]:
                await self._db.pool.execute("ANALYZE jobs", timeout=60)
                self._inserted_at_analyze = row["inserted"]
            elif baseline is None:
                self._inserted_at_analyze = row["inserted"]
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("analyze of jobs failed: %s", exc)

    async def _vacuum(self) -> None:
        try:
            conn = await asyncpg.connect(self._settings.sync_database_url, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("vacuum skipped: %s", exc)
            return
        try:
            if await conn.fetchval("SELECT current_setting('autovacuum')") == "on":
                self._server_vacuums = True  # the server does it: never again
                return
            t = time.monotonic()
            await conn.execute("VACUUM (ANALYZE) jobs", timeout=600)
            self._inserted_at_analyze = await conn.fetchval(JOBS_INSERTED, timeout=5)
            log.info("autovacuum is off on this server: vacuumed jobs in %.2f s",
                     time.monotonic() - t)  # fmt: skip
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("vacuum of jobs failed: %s", exc)
        finally:
            await conn.close()

    def _start_queue_vacuum(self) -> None:
        """Every ``SWITCHYARD_QUEUE_VACUUM_SECONDS``, in the background: vacuum the ready
        queue, whatever the server's autovacuum does. Each dispatch leaves its entry at
        the head of the key the claim reads, dead, until a vacuum; autovacuum looks at a
        database once a minute at most, and a busy yard dispatches tens of thousands of
        jobs a minute. The queue holds only the claimable jobs, so this costs a pass over
        the backlog's index, not the history's. INDEX_CLEANUP ON, since those dead
        entries are the point (PostgreSQL skips the index when few pages have dead
        rows); TRUNCATE OFF, since cutting a drained queue's empty pages would take a
        lock that holds every write to ``jobs`` (each fires the queue's trigger)."""
        every = self._settings.queue_vacuum_seconds
        now = time.monotonic()
        if every <= 0 or now - self._last_queue_vacuum < every:
            return
        if self._queue_vacuum_task is not None and not self._queue_vacuum_task.done():
            return
        self._last_queue_vacuum = now
        self._queue_vacuum_task = asyncio.create_task(self._vacuum_queue(), name="queue-vacuum")

    async def _vacuum_queue(self) -> None:
        try:
            await self._db.pool.execute(QUEUE_VACUUM, timeout=60)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("vacuum of the ready queue failed: %s", exc)

    # ------------------------------------------------------------ monitoring

    async def monitor(self) -> None:
        """Every ``SWITCHYARD_MONITORING_SECONDS``: the queue depths and the fleet's
        capacity and allocation."""
        now = time.monotonic()
        if now - self._last_monitoring < self._settings.monitoring_seconds:
            return
        self._last_monitoring = now
        async with self._db.session() as session:
            by_status, by_priority = await queue_depth(session)
        self._outbox.put(
            [MonitoringQueue(by_status=by_status, by_priority=by_priority), self._resources()]
        )

    def _resources(self) -> MonitoringResource:
        alive = [w for w in self._fleet.workers.values() if w.state != "dead"]
        views = {v.id: v for v in self._fleet.views()}
        return MonitoringResource(
            workers_alive=len(alive),
            capacity=WorkerCapacity(
                cpu_units=sum(w.cpu_units for w in alive),
                memory_mb=sum(w.memory_mb for w in alive),
                slots=sum(w.slots for w in alive),
            ),
            allocated=WorkerCapacity(
                cpu_units=round(sum(views[w.id].used_cpu for w in alive), 6),
                memory_mb=sum(views[w.id].used_memory for w in alive),
                slots=sum(views[w.id].used_slots for w in alive),
            ),
        )
