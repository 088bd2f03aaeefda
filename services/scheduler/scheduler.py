"""The scheduler: one active instance (PostgreSQL advisory lock), the others stand by.

The active one consumes ``<ns>.scheduler`` (job.submitted, job.status, heartbeats,
progress) and runs a cycle whenever a message arrives or the tick passes:

1. apply attempt reports (fenced by attempt number), progress and heartbeats; commit;
   ack those messages; publish the resulting ``job.state`` events;
2. declare lost what a dead worker held (no heartbeat for the lease) or what a live
   worker never received, and retry or fail it like a failed attempt;
3. promote delayed / backoff jobs whose time has come;
4. place ready jobs (see ``shared.scheduling``), mark them running with a new attempt
   number, commit, then publish the dispatches (undone if the publish fails).

Everything it knows in memory (workers, allocations) is rebuilt from the database
when it takes over, so a standby that takes over continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import store
from services.scheduler.placement import Candidate, WorkerView, plan_placements
from shared.catalog import TaskCatalog
from shared.db import RAW_DB_ERRORS, create_engine, create_pool, create_sessionmaker, is_db_outage
from shared.errors import SwitchyardError
from shared.jobs import annotations, reads, retention, transitions
from shared.jobs.prepare import Limits
from shared.jobs.transitions import Placed
from shared.messages import (
    JobCancel,
    JobDispatch,
    JobProgress,
    JobStateChanged,
    JobStatusReport,
    JobSubmitted,
    MonitoringQueue,
    MonitoringResource,
    ResourceSpec,
    WorkerCapacity,
    WorkerHeartbeat,
    _Message,
    dispatches_for,
    unpack,
)
from shared.messaging import Broker, Consumer, Delivery, Outbox, Topology, ack_all
from shared.schedules import fire_due_schedules
from shared.settings import Settings
from shared.stats import queue_depth

log = logging.getLogger("switchyard.scheduler")


class LeadershipLost(SwitchyardError):
    """The advisory lock's connection is gone: another instance may be active now."""


@dataclass
class WorkerInfo:
    id: str
    cpu_units: float
    memory_mb: int
    slots: int
    task_types: frozenset[str]
    state: str = "alive"
    last_seen: float = field(default_factory=time.monotonic)
    running: frozenset[UUID] = frozenset()
    allocated: WorkerCapacity = field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )
    stuck: WorkerCapacity = field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )


@dataclass
class Assignment:
    job_id: UUID
    worker_id: str
    attempt: int
    cpu_units: float
    memory_mb: int
    dispatched: float = field(default_factory=time.monotonic)


def lock_key(namespace: str) -> int:
    """A stable signed 64-bit advisory lock key per namespace."""
    return int.from_bytes(
        hashlib.sha256(f"switchyard:{namespace}".encode()).digest()[:8], "big", signed=True
    )


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = Broker(
            settings.amqp_url,
            settings.namespace,
            name="switchyard-scheduler",
            publish_timeout=settings.publish_timeout_seconds,
        )
        self.outbox = Outbox(self.broker, linger=settings.event_linger_seconds)
        self.workers: dict[str, WorkerInfo] = {}
        self.assignments: dict[UUID, Assignment] = {}
        self.inbox: list[Delivery] = []
        self.wake = asyncio.Event()
        self.rng = random.Random()
        self.is_leader = False
        self._lock_conn: asyncpg.Connection | None = None
        self._last_lock_check = 0.0
        self._last_monitoring = 0.0
        self._last_cancel_sweep = 0.0
        self._last_timed = 0.0
        self._last_vacuum = time.monotonic()
        self._vacuum_task: asyncio.Task[None] | None = None
        self._last_prune = 0.0  # the first sweep runs soon after taking over
        self._prune_task: asyncio.Task[None] | None = None
        self._server_vacuums = False
        # False once a placement pass found no ready job left: until a hint, a job
        # turning ready or the next tick, cycles skip the ready-queue query.
        self._maybe_ready = True
        self.catalog = TaskCatalog()
        self.limits = Limits.from_settings(settings)
        self._cancels: list[JobCancel] = []
        # The waiting reason last written per ready job: a cycle writes only the ones
        # that changed (the heads of a long queue keep theirs from cycle to cycle).
        self._reasons: dict[UUID, str] = {}
        self._zombies: set[tuple[UUID, str]] = set()
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._pool: asyncpg.Pool | None = None  # raw statements of the placement path
        # Dispatch publishes whose confirms are awaited beside the cycle loop (a
        # confirm is a broker round trip the next cycle need not wait for), and the
        # placements whose publish failed, undone at the start of the next cycle.
        self._confirming: set[asyncio.Task[None]] = set()
        self._unconfirmed: list[Placed] = []

    # ------------------------------------------------------------ leadership

    async def run(self, stop: asyncio.Event) -> None:
        engine = create_engine(self.settings, pool_size=4)
        self._sessionmaker = create_sessionmaker(engine)
        # Connects on first use (a standby, or a start during an outage, holds none).
        # Its statements (claim, dispatch, reports, waiting reasons, retention) have one
        # good plan whatever the parameters: plan them once per connection. The cycle
        # uses one connection at a time, the retention sweep one beside it.
        self._pool = await create_pool(self.settings, min_size=0, max_size=3, generic_plans=True)
        try:
            async with self.broker:
                self.outbox.start()
                while not stop.is_set():
                    await self._wait_for_leadership(stop)
                    if stop.is_set():
                        break
                    try:
                        await self._lead(stop)
                    except (LeadershipLost, SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                        # Another instance may be active now (or the take-over could not
                        # read the database): stop acting at once, forget what we knew,
                        # and stand by again (our unacked messages go back to the queue
                        # for whoever leads).
                        log.error("%s; standing by again", exc)
                        self.is_leader = False
                        self.workers.clear()
                        self.assignments.clear()
                        self.inbox.clear()
                        self._zombies.clear()
                        self._cancels.clear()
                        self._reasons.clear()
                        self._unconfirmed.clear()  # the next leader's loss check has them
                        if self._lock_conn is not None and not self._lock_conn.is_closed():
                            self._lock_conn.terminate()
                        self._lock_conn = None
                await self.outbox.close()
        finally:
            if self._lock_conn is not None and not self._lock_conn.is_closed():
                await self._lock_conn.close()
            await self._pool.close()
            self._pool = None
            await engine.dispose()

    async def _wait_for_leadership(self, stop: asyncio.Event) -> None:
        key = lock_key(self.settings.namespace)
        announced = False
        while not stop.is_set():
            try:
                if self._lock_conn is None or self._lock_conn.is_closed():
                    self._lock_conn = await asyncpg.connect(
                        self.settings.sync_database_url, timeout=5
                    )
                if await self._lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    self.is_leader = True
                    log.info("active scheduler for namespace %r", self.settings.namespace)
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("cannot reach the database for the scheduler lock: %s", exc)
            if not announced:
                log.info("standing by: another scheduler is active for %r", self.settings.namespace)
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def _check_leadership(self) -> None:
        now = time.monotonic()
        if now - self._last_lock_check < 0.5:
            return
        self._last_lock_check = now
        try:
            assert self._lock_conn is not None
            await self._lock_conn.fetchval("SELECT 1", timeout=5)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            TimeoutError,
            AssertionError,
        ) as exc:
            raise LeadershipLost(f"lost the scheduler lock's connection: {exc!r}") from exc

    # ------------------------------------------------------------ the active loop

    async def _lead(self, stop: asyncio.Event) -> None:
        await self._rebuild()
        topo = self.broker.topology
        consumer: Consumer = await self.broker.consume(
            topo.scheduler_queue, Topology.SCHEDULER_BINDINGS, self._on_delivery, prefetch=5000
        )
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(
                        self.wake.wait(), timeout=self.settings.scheduler_tick_seconds
                    )
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                self.wake.clear()
                await self._check_leadership()
                try:
                    await self.cycle()
                except (SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                    # Outage, deadlock victim, serialization failure: nothing was
                    # committed for the failed step; the next cycle redoes it.
                    what = "database unavailable" if is_db_outage(exc) else "cycle failed"
                    log.warning("%s (%s); retrying", what, exc)
                    await asyncio.sleep(0.5)
                    self.wake.set()
        finally:
            await consumer.close()
            if self._confirming:  # what they confirm or refuse belongs to this leadership
                await asyncio.wait(self._confirming, timeout=self.settings.publish_timeout_seconds)
            if stop.is_set() and self._unconfirmed:  # a clean stop: still the leader
                try:
                    await self._undo_unconfirmed()
                except (SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                    log.warning("refused dispatches not put back (%s): the lease check will", exc)
            for task in (self._vacuum_task, self._prune_task):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.inbox.append(delivery)
        self.wake.set()

    async def _rebuild(self) -> None:
        """Take over: workers and allocations as the database has them."""
        assert self._sessionmaker is not None
        self._unconfirmed.clear()  # from an earlier leadership (a confirm that came late)
        self._maybe_ready = True
        async with self._sessionmaker() as session:
            for w in await store.load_live_workers(session):
                self.workers[w.id] = WorkerInfo(
                    id=w.id,
                    cpu_units=w.cpu_units,
                    memory_mb=w.memory_mb,
                    slots=w.slots,
                    task_types=frozenset(w.task_types or ()),
                    state=w.state,
                )
            for r in await reads.running_jobs(session):
                self.assignments[r["id"]] = Assignment(
                    r["id"], r["worker_id"], r["attempts"], r["cpu_units"], r["memory_mb"]
                )
        log.info(
            "took over: %d live worker(s), %d running job(s)",
            len(self.workers),
            len(self.assignments),
        )

    async def cycle(self) -> None:
        assert self._sessionmaker is not None
        batch, self.inbox = self.inbox, []
        reports: list[JobStatusReport] = []
        beats: dict[str, WorkerHeartbeat] = {}
        progress: dict[tuple[UUID, int], dict[str, object]] = {}
        for msg in (m for delivery in batch for m in delivery.messages):
            if isinstance(msg, JobSubmitted):
                self._maybe_ready = True
            elif isinstance(msg, JobStatusReport):
                reports.append(msg)
            elif isinstance(msg, WorkerHeartbeat):
                beats[msg.worker_id] = msg
            elif isinstance(msg, JobProgress):
                progress[(msg.job_id, msg.attempt)] = {
                    "done": msg.done,
                    "total": msg.total,
                    "message": msg.message,
                    "ts": msg.ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                }
        for hb in beats.values():
            self._register_heartbeat(hb)

        events: list[JobStateChanged] = []
        # Starts and completions (nearly every report) on the raw pool; the rest, with
        # progress and heartbeats, in a session. Each outcome counts once committed: a
        # batch kept for the next cycle after a failure is applied again, and the fence
        # then ignores what had already been applied.
        successes, others = transitions.split_reports(reports)
        assert self._pool is not None
        try:
            if successes:
                outcome = await transitions.apply_successes(self._pool, successes)
                self._free(outcome.freed)
                events.extend(outcome.events)
            if others or beats or progress:
                async with self._sessionmaker() as session:
                    # (Progress is fenced by attempt only: its final value lands even when
                    # the completion that shared its batch was committed just before.)
                    await annotations.save_progress(session, progress)
                    outcome = await transitions.apply_reports(session, others, rng=self.rng)
                    await store.save_workers(session, list(beats.values()))
                    await session.commit()
                self._free(outcome.freed)
                events.extend(outcome.events)
        except BaseException:
            self.inbox[:0] = batch  # not (all) applied: keep them (unacked) for the next cycle
            self._announce(events)  # what was applied (the fence ignores it next time)
            raise
        await ack_all(batch)
        try:
            events.extend(await self._handle_losses())
            events.extend(await self._timed_work())
        except BaseException:
            # What is committed keeps its events even when a later step fails.
            self._announce(events)
            raise
        # Published together, before this cycle's dispatches (as one batch per kind).
        self._announce(events)
        # A cycle that put refused dispatches back does not place: they are placed again
        # from the next cycle on (a message or the tick), not in a loop at broker speed.
        if not await self._undo_unconfirmed():
            await self._place()
        await self._send_cancels()
        await self._monitor()
        self._maintain()

    async def _timed_work(self) -> list[JobStateChanged]:
        """Time-driven work (due delays and backoffs, cron), once per tick, not on every
        message: a busy cycle stays a few statements long."""
        assert self._sessionmaker is not None
        now = time.monotonic()
        if now - self._last_timed < self.settings.scheduler_tick_seconds:
            return []
        self._last_timed = now
        # Also the safety net for jobs whose wake-up hint was never published.
        self._maybe_ready = True
        async with self._sessionmaker() as session:
            due = await transitions.promote_due(session, limit=self.settings.scheduler_batch_size)
            if len(due) >= self.settings.scheduler_batch_size:
                self._last_timed = 0.0  # more are due: again next cycle, not next tick
            fired, new_jobs = await fire_due_schedules(
                session, catalog=self.catalog, limits=self.limits
            )
            await session.commit()
        if new_jobs:
            log.info("schedules submitted %d job(s)", len(new_jobs))
        return [*due, *fired]

    # ------------------------------------------------------------ workers and losses

    def _register_heartbeat(self, hb: WorkerHeartbeat) -> None:
        info = self.workers.get(hb.worker_id)
        if info is None:
            info = WorkerInfo(
                id=hb.worker_id,
                cpu_units=hb.capacity.cpu_units,
                memory_mb=hb.capacity.memory_mb,
                slots=hb.capacity.slots,
                task_types=frozenset(hb.task_types),
            )
            self.workers[hb.worker_id] = info
            log.info(
                "worker %s joined (%g cpu, %d MB, %d slots)",
                hb.worker_id,
                info.cpu_units,
                info.memory_mb,
                info.slots,
            )
        info.cpu_units, info.memory_mb, info.slots = (
            hb.capacity.cpu_units,
            hb.capacity.memory_mb,
            hb.capacity.slots,
        )
        info.task_types = frozenset(hb.task_types)
        info.state = "dead" if hb.state == "stopped" else hb.state
        info.last_seen = time.monotonic()
        info.running = frozenset(hb.running)
        info.allocated = hb.allocated
        info.stuck = hb.stuck
        # Attempts it runs that the database has moved on from (it was declared lost and
        # came back, or missed a cancel): tell it to stop them.
        for job_id in info.running:
            a = self.assignments.get(job_id)
            if a is None or a.worker_id != info.id:
                self._zombies.add((job_id, info.id))

    async def _handle_losses(self) -> list[JobStateChanged]:
        now = time.monotonic()
        lease = self.settings.worker_lease_seconds
        lost: list[JobStatusReport] = []
        newly_dead: list[str] = []
        for info in self.workers.values():
            silent = now - info.last_seen
            if info.state != "dead" and silent > lease:
                info.state = "dead"
                newly_dead.append(info.id)
                log.warning("worker %s lost: no heartbeat for %.1f s", info.id, silent)
        for a in list(self.assignments.values()):
            holder = self.workers.get(a.worker_id)
            reason = None
            if holder is None or holder.state == "dead":
                reason = f"worker {a.worker_id} lost (no heartbeat for over {lease:g} s)"
            elif a.job_id not in holder.running and holder.last_seen - a.dispatched > lease:
                # Never reached the worker (or was dropped there): not a failed run, so
                # it gives its run back like a hand-back; the worker is told to drop it
                # should it turn up after all.
                reason = f"worker {a.worker_id} never started the attempt within {lease:g} s"
                lost.append(
                    JobStatusReport(
                        job_id=a.job_id, attempt=a.attempt, worker_id=a.worker_id,
                        status="handed_back", error=reason,
                    )
                )  # fmt: skip
                self._cancels.append(JobCancel(job_id=a.job_id, attempt=a.attempt))
                continue
            if reason:
                lost.append(
                    JobStatusReport(
                        job_id=a.job_id,
                        attempt=a.attempt,
                        worker_id=a.worker_id,
                        status="failed",
                        error=reason,
                    )
                )
        if not lost and not newly_dead:
            return []
        assert self._sessionmaker is not None
        async with self._sessionmaker() as session:
            outcome = await transitions.apply_reports(session, lost, rng=self.rng)
            for worker_id in newly_dead:
                await store.mark_worker_dead(session, worker_id)
            await session.commit()
        self._free(outcome.freed)
        self._prune_dead_workers()
        # Tell the logger (its executions row) what happened to each lost attempt.
        applied = {job_id for job_id, _ in outcome.freed}
        await self._send(
            [
                JobStatusReport(
                    job_id=r.job_id,
                    attempt=r.attempt,
                    worker_id=r.worker_id,
                    status="lost",
                    error=r.error,
                )
                for r in lost
                if r.job_id in applied
            ]
        )
        for r in lost:  # reports the fence refused: stale memory, drop it
            if r.job_id not in applied:
                self.assignments.pop(r.job_id, None)
        return outcome.events

    def _prune_dead_workers(self) -> None:
        """Forget dead workers that hold nothing (a worker id may come back later)."""
        holding = {a.worker_id for a in self.assignments.values()}
        for worker_id in [w.id for w in self.workers.values() if w.state == "dead"]:
            if worker_id not in holding:
                del self.workers[worker_id]

    async def _send_cancels(self) -> None:
        """Re-send job.cancel for running jobs whose cancel was requested (the API's one
        publish is best effort), and stop attempts a worker runs that were superseded."""
        now = time.monotonic()
        if now - self._last_cancel_sweep < max(1.0, self.settings.heartbeat_seconds):
            if not self._cancels:
                return
        else:
            self._last_cancel_sweep = now
            assert self._sessionmaker is not None
            async with self._sessionmaker() as session:
                for job_id, attempt in await reads.running_cancel_requests(session):
                    self._cancels.append(JobCancel(job_id=job_id, attempt=attempt))
                zombies, self._zombies = self._zombies, set()
                current = await reads.current_attempts(session, [j for j, _ in zombies])
            for job_id, worker_id in zombies:
                a = self.assignments.get(job_id)
                # Running elsewhere as attempt N: stop attempts up to N-1 only.
                attempt = a.attempt - 1 if a is not None else current.get(job_id, 0)
                if attempt > 0:
                    log.info(
                        "telling worker %s to stop job %s (attempt <= %d)",
                        worker_id,
                        job_id,
                        attempt,
                    )
                    self._cancels.append(JobCancel(job_id=job_id, attempt=attempt))
        cancels, self._cancels = self._cancels, []
        await self._send(list(cancels))

    def _free(self, freed: list[tuple[UUID, str]]) -> None:
        for job_id, worker_id in freed:
            a = self.assignments.get(job_id)
            if a is not None and a.worker_id == worker_id:
                del self.assignments[job_id]

    def _views(self) -> list[WorkerView]:
        views = {
            w.id: WorkerView(
                id=w.id,
                cpu_units=w.cpu_units,
                memory_mb=w.memory_mb,
                slots=w.slots,
                task_types=w.task_types,
                used_cpu=w.stuck.cpu_units,
                used_memory=w.stuck.memory_mb,
                used_slots=w.stuck.slots,
                accepting=w.state == "alive",
            )
            for w in self.workers.values()
        }
        for a in self.assignments.values():
            v = views.get(a.worker_id)
            if v is not None:
                v.used_cpu += a.cpu_units
                v.used_memory += a.memory_mb
                v.used_slots += 1
        # What the worker itself says it holds can be more (attempts the database has
        # moved on from still running there): count whichever is larger.
        for w in self.workers.values():
            v = views[w.id]
            v.used_cpu = max(v.used_cpu, w.allocated.cpu_units)
            v.used_memory = max(v.used_memory, w.allocated.memory_mb)
            v.used_slots = max(v.used_slots, w.allocated.slots)
        return list(views.values())

    # ------------------------------------------------------------ placement

    async def _place(self) -> None:
        assert self._sessionmaker is not None and self._pool is not None
        if not self._maybe_ready:
            return  # the last look found the ready queue empty and nothing came since
        wide = False
        for _ in range(20):  # bounded: let other work (reports) in between
            views = self._views()
            free = sum(max(0, v.slots - v.used_slots) for v in views if v.accepting)
            if free == 0:
                return  # nothing can be placed: do not read candidates at all
            # Enough heads per priority to fill every free slot, and some more so that
            # jobs too big for the free room now do not hide smaller ones (backfill).
            full = self.settings.scheduler_batch_size
            batch = full if wide else min(full, max(32, 2 * free))
            # Two statements, no transaction around them (round trips are most of a
            # placement's latency): a plain read of the heads, then one UPDATE that
            # re-checks each is still ready and commits before anything is published.
            candidates = [
                Candidate(r["id"], r["type"], r["priority"], r["cpu_units"], r["memory_mb"],
                          r["run_at"], r["ready_at"])
                for r in await reads.ready_heads(self._pool, per_priority=batch)
            ]  # fmt: skip
            if not candidates:
                self._maybe_ready = False
                return
            now = datetime.now(UTC)
            plan = plan_placements(
                candidates, views, now=now, aging_seconds=self.settings.aging_seconds
            )
            if not plan.placements and batch < full and len(candidates) >= batch:
                # The heads read fit nowhere now (no worker runs their type, or too big
                # for the room left), and there may be more behind them: look as far
                # back as SWITCHYARD_SCHEDULER_BATCH_SIZE before giving up.
                wide = True
                continue
            placed = await transitions.dispatch(
                self._pool,
                [(job.id, worker_id) for job, worker_id in plan.placements],
                lease_seconds=self.settings.worker_lease_seconds,
            )
            if not placed:
                await self._set_waiting_reasons(plan.waiting)
                return
            for p in placed:
                self.assignments[p.id] = Assignment(
                    p.id, p.worker_id, p.attempts, p.cpu_units, p.memory_mb
                )
                self._reasons.pop(p.id, None)  # the dispatch cleared it
            lease_until = now + timedelta(seconds=self.settings.worker_lease_seconds)
            per_worker: dict[str, list[Placed]] = {}
            for p in placed:
                per_worker.setdefault(p.worker_id, []).append(p)
            # Each worker's dispatches travel together (a batch per worker per cycle).
            messages: list[tuple[_Message, str]] = []
            carried: list[list[Placed]] = []  # the placements each message carries
            for worker_id, group in per_worker.items():
                for message, key in dispatches_for(
                    worker_id,
                    [
                        JobDispatch(
                            job_id=p.id,
                            attempt=p.attempts,
                            type=p.type,
                            payload=p.payload,
                            resources=ResourceSpec(cpu_units=p.cpu_units, memory_mb=p.memory_mb),
                            timeout_seconds=p.timeout_seconds,
                            lease_expires_at=lease_until,
                        )
                        for p in group
                    ],
                ):
                    ids = {d.job_id for d in unpack(message)}  # type: ignore[arg-type]
                    messages.append((message, key))
                    carried.append([p for p in group if p.id in ids])
            events = transitions.dispatched_events(placed)
            # The confirms are awaited beside the loop: the next cycle (the next hint,
            # the reports of what just started) does not wait a broker round trip.
            # Their events go out now, in commit order: they are committed, and a later
            # event of the same job (its completion) must not overtake them. A refused
            # dispatch is followed by its running -> ready event when it is undone.
            self._announce(events)
            task = asyncio.create_task(self._confirm(messages, carried))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
            # Why the others wait, after the dispatches (only a changed reason is written).
            await self._set_waiting_reasons(plan.waiting)
            if len(plan.placements) == len(candidates) < batch:
                self._maybe_ready = False  # every ready job is placed now
                return
            if len(plan.placements) < len(candidates) or len(placed) < batch:
                return

    async def _confirm(
        self, messages: list[tuple[_Message, str]], carried: list[list[Placed]]
    ) -> None:
        """Await one placement's dispatch confirms. What the broker did not confirm is
        undone by the next cycle (``_undo_unconfirmed``)."""
        try:
            results: list[object] = list(await self.broker.publish_each(messages))
        except Exception as exc:  # not a broker error: still, none of them is confirmed
            log.exception("publishing %d dispatch message(s) failed", len(messages))
            results = [exc] * len(messages)
        failed = [
            p for group, err in zip(carried, results, strict=True) if err is not None for p in group
        ]
        if failed:
            log.warning("%d dispatch publish(es) failed (%s); putting them back", len(failed),
                        next(e for e in results if e is not None))  # fmt: skip
            self._unconfirmed.extend(failed)

    async def _undo_unconfirmed(self) -> bool:
        """Put back the placements whose dispatch publish failed (True if there were).
        A failed confirm does not prove the message was lost: the worker is told to drop
        that attempt should it arrive, and the job goes back to ready (the undo, and
        forgetting the assignment, are fenced by attempt)."""
        if not self._unconfirmed:
            return False
        assert self._sessionmaker is not None
        # Taken out first: a confirm that fails during the awaits below adds to a new list.
        failed, self._unconfirmed = self._unconfirmed, []
        try:
            await self._send([JobCancel(job_id=p.id, attempt=p.attempts) for p in failed])
            async with self._sessionmaker() as session:
                undone = await transitions.undo_dispatch(session, failed)
                await session.commit()
        except BaseException:
            self._unconfirmed[:0] = failed  # not undone: the next cycle tries again
            raise
        for p in failed:
            held = self.assignments.get(p.id)
            if held is not None and held.attempt == p.attempts:
                del self.assignments[p.id]
        self._maybe_ready = True
        self._announce(undone)
        return True

    async def _set_waiting_reasons(self, reasons: dict[UUID, str]) -> None:
        assert self._pool is not None
        changed = {job: why for job, why in reasons.items() if self._reasons.get(job) != why}
        if not changed:
            return
        ready = await annotations.set_waiting_reasons(self._pool, changed)
        if len(self._reasons) > 100_000:  # bounded: forgetting only costs a rewrite
            self._reasons.clear()
        self._reasons.update((job, changed[job]) for job in ready)

    # ------------------------------------------------------------ publishing

    def _announce(self, events: list[JobStateChanged]) -> None:
        """Publish committed transitions; jobs they made ready are placed next."""
        if any(e.new_status == "ready" for e in events):
            self._maybe_ready = True
        self.outbox.put(list(events))

    async def _send(self, messages: list[_Message]) -> None:
        # Committed already; these are notifications: the outbox publishes them in
        # order without holding up the cycle, and says what it could not send.
        self.outbox.put(messages)

    def _maintain(self) -> None:
        self._maintain_retention()
        self._maintain_vacuum()

    def _maintain_retention(self) -> None:
        """Every ``SWITCHYARD_RETENTION_SWEEP_SECONDS``, in the background: delete what
        finished more than ``SWITCHYARD_RETENTION_DAYS`` ago (0: never)."""
        days = self.settings.retention_days
        now = time.monotonic()
        if days <= 0 or now - self._last_prune < self.settings.retention_sweep_seconds:
            return
        if self._prune_task is not None and not self._prune_task.done():
            return
        self._last_prune = now
        self._prune_task = asyncio.create_task(self._prune(days), name="retention")

    async def _prune(self, days: float) -> None:
        assert self._pool is not None
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            n = await retention.prune_finished(self._pool, older_than=cutoff)
        except RAW_DB_ERRORS as exc:
            log.warning("retention sweep failed (next one in %g s): %s",
                        self.settings.retention_sweep_seconds, exc)  # fmt: skip
            return
        if n:
            log.info("retention: deleted %d job(s) finished before %s", n, cutoff.isoformat())

    def _maintain_vacuum(self) -> None:
        """Vacuum ``jobs`` in the background when the server's autovacuum is off.

        Every dispatch and report writes a new row version; the old ones stay in the
        ready index until a vacuum, so the claim scans more dead entries the longer
        the run. PostgreSQL's autovacuum does this on its own when it is on (the
        default, and in docker-compose.yml)."""
        every = self.settings.vacuum_seconds
        now = time.monotonic()
        if every <= 0 or self._server_vacuums or now - self._last_vacuum < every:
            return
        if self._vacuum_task is not None and not self._vacuum_task.done():
            return
        self._last_vacuum = now
        self._vacuum_task = asyncio.create_task(self._vacuum(), name="vacuum")

    async def _vacuum(self) -> None:
        try:
            conn = await asyncpg.connect(self.settings.sync_database_url, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("vacuum skipped: %s", exc)
            return
        try:
            if await conn.fetchval("SELECT current_setting('autovacuum')") == "on":
                self._server_vacuums = True  # the server does it: never again
                return
            t = time.monotonic()
            await conn.execute("VACUUM (ANALYZE) jobs", timeout=600)
            log.info("autovacuum is off on this server: vacuumed jobs in %.2f s",
                     time.monotonic() - t)  # fmt: skip
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("vacuum of jobs failed: %s", exc)
        finally:
            await conn.close()

    async def _monitor(self) -> None:
        now = time.monotonic()
        if now - self._last_monitoring < self.settings.monitoring_seconds:
            return
        self._last_monitoring = now
        assert self._sessionmaker is not None
        async with self._sessionmaker() as session:
            by_status, by_priority = await queue_depth(session)
        alive = [w for w in self.workers.values() if w.state != "dead"]
        views = {v.id: v for v in self._views()}
        await self._send(
            [
                MonitoringQueue(by_status=by_status, by_priority=by_priority),
                MonitoringResource(
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
                ),
            ]
        )
