"""Placing ready jobs on workers and telling them: claim, publish, confirm, undo.

Each pass reads the heads of the ready queue, lets ``placement`` decide, marks the
chosen jobs running with a new attempt number (committed), then publishes their
dispatches. The publishes' confirms are awaited beside the cycle loop; a dispatch the
broker did not confirm is put back at the start of the next cycle. Why the jobs left
behind wait is written on them (only when it changed).

Backfill, however many jobs wait ahead: heads that no live worker could run even when
empty are parked (with those behind them in claim order) and the heads read again;
heads that fit a worker but not its room now are read past (the heads of what fits the
room now come beside them). When the fleet's capacities grow, what now fits is
un-parked. docs/architecture.md (placement) and docs/performance-history.md (what each costs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from services.scheduler.database import Database
from services.scheduler.fleet import Fleet
from services.scheduler.placement import (
    Candidate,
    WorkerView,
    capacities,
    fits_nowhere_templates,
    plan_placements,
    room,
)
from shared.bodies import dispatches_for
from shared.broker import Broker
from shared.db import RAW_DB_ERRORS
from shared.jobs import parking, reads, transitions
from shared.jobs.annotations import set_waiting_reasons, written_waiting_reasons
from shared.jobs.transitions import Placed
from shared.messages import (
    JobCancel,
    JobDispatch,
    JobStateChanged,
    ResourceSpec,
    _Message,
    unpack,
    validation_summary,
)
from shared.outbox import Outbox
from shared.settings import Settings

log = logging.getLogger("switchyard.scheduler")

_PASSES = 20  # placement passes per cycle at most: let other work (reports) in between
# After a read past the heads found nothing that fits the room left, the next such read
# waits this long (seconds): a job that fits only the room left waits at most about it.
ROOM_SEARCH_PAUSE = 1.0
# Jobs per priority one parking statement looks at (claim order). Chunks run until one
# parks less than this, so N jobs that fit nowhere take about N / this statements, once;
# each statement writes at most four windows of rows (about a second here: well inside
# the pool's statement timeout). Un-parking goes by chunks of ids for the same reason.
PARK_WINDOW = 5_000
UNPARK_CHUNK = 20_000


class WaitingReasons:
    """The waiting reasons written on ready jobs, as the database has them: a cycle
    writes only the ones that changed (the heads of a long queue keep theirs from cycle
    to cycle). Only written reasons are kept: a job that only waits for room has none
    (it reads as ``free_capacity_reason``), so nearly every queued job costs nothing
    here. Read from the database when leading starts, so that a reason an earlier
    leader wrote (a reservation) is cleared once it no longer holds."""

    LIMIT = 100_000  # past it, read again from the database

    def __init__(self, db: Database) -> None:
        self._db = db
        self._written: dict[UUID, str] = {}

    async def load(self) -> None:
        self._written = await written_waiting_reasons(self._db.cycle, limit=self.LIMIT)

    async def write(self, reasons: dict[UUID, str | None]) -> None:
        changed = {job: why for job, why in reasons.items() if self._written.get(job) != why}
        if not changed:
            return
        for job in await set_waiting_reasons(self._db.cycle, changed):
            why = changed[job]
            if why is None:
                self._written.pop(job, None)
            else:
                self._written[job] = why
        if len(self._written) > self.LIMIT:
            await self.load()

    def cleared(self, jobs: Iterable[UUID]) -> None:
        """The dispatch of these jobs cleared their reason."""
        for job in jobs:
            self._written.pop(job, None)

    def clear(self) -> None:
        self._written.clear()


class Dispatcher:
    def __init__(
        self, settings: Settings, db: Database, broker: Broker, outbox: Outbox, fleet: Fleet
    ) -> None:
        self._settings = settings
        self._db = db
        self._broker = broker
        self._outbox = outbox
        self._fleet = fleet
        # False once a placement pass found no ready job left: until a hint, a job
        # turning ready or the next tick, cycles skip the ready-queue query.
        self.maybe_ready = True
        self._reasons = WaitingReasons(db)
        # Dispatch publishes whose confirms are awaited beside the cycle loop (a
        # confirm is a broker round trip the next cycle need not wait for), and the
        # placements whose publish failed, undone at the start of the next cycle.
        self._confirming: set[asyncio.Task[None]] = set()
        self._unconfirmed: list[Placed] = []
        # The fleet's capacities when parked jobs were last un-parked against them (None:
        # not since taking over, when the fleet may have changed under another leader).
        self._capacities_seen: set[tuple[str, float, int]] | None = None
        self._room_search_after = 0.0  # time.monotonic() before which no room search
        self._fruitless_room: set[tuple[str, float, int]] = set()  # what it searched

    # ------------------------------------------------------------ leadership

    async def take_over(self) -> None:
        self._unconfirmed.clear()  # from an earlier leadership (a confirm that came late)
        self.maybe_ready = True
        self._capacities_seen = None
        await self._reasons.load()

    def forget(self) -> None:
        """Leadership lost: the next leader's loss check has the unconfirmed ones."""
        self._reasons.clear()
        self._unconfirmed.clear()
        self._capacities_seen = None

    async def settle(self, stop: asyncio.Event) -> None:
        """The leading loop ended: await the confirms in flight (what they confirm or
        refuse belongs to this leadership); on a clean stop, still the leader, put back
        what the broker refused."""
        if self._confirming:
            await asyncio.wait(self._confirming, timeout=self._settings.publish_timeout_seconds)
        if stop.is_set() and self._unconfirmed:
            try:
                await self.undo_unconfirmed()
            except (SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                log.warning("refused dispatches not put back (%s): the lease check will", exc)

    # ------------------------------------------------------------ publishing

    def announce(self, events: list[JobStateChanged]) -> None:
        """Publish committed transitions; jobs they made ready are placed next."""
        if any(e.new_status == "ready" for e in events):
            self.maybe_ready = True
        self._outbox.put(list(events))

    # ------------------------------------------------------------ placement

    async def place(self) -> None:
        await self._unpark_if_the_fleet_grew()
        if not self.maybe_ready:
            return  # the last look found the ready queue empty and nothing came since
        past_the_room = False  # read the heads of what fits the room now as well
        for _ in range(_PASSES):
            views = self._fleet.views()
            free = sum(max(0, v.slots - v.used_slots) for v in views if v.accepting)
            if free == 0:
                return  # nothing can be placed: do not read candidates at all
            # Enough heads per priority to fill every free slot, and some more so that
            # a few jobs too big for the free room now do not hide smaller ones.
            batch = min(self._settings.scheduler_batch_size, max(32, 2 * free))
            candidates = await self._ready_heads(batch, room(views) if past_the_room else None)
            if not candidates:
                self.maybe_ready = False
                return
            now = datetime.now(UTC)
            plan = plan_placements(
                candidates, views, now=now, aging_seconds=self._settings.aging_seconds
            )
            if plan.unfittable and await self._park(views):
                continue  # the heads without them (and without those behind them)
            placed = await transitions.dispatch(
                self._db.cycle,
                [(job.id, worker_id) for job, worker_id in plan.placements],
                lease_seconds=self._settings.worker_lease_seconds,
            )
            if placed:
                self._fleet.assign(placed)
                self._reasons.cleared(p.id for p in placed)
                undispatchable = self._publish(placed, now)
                if undispatchable:
                    await self._fail_undispatchable(undispatchable)
            # Why the others wait, after the dispatches (only a changed reason is written).
            await self._reasons.write(plan.waiting)
            if len(plan.placements) == len(candidates) < batch:
                self.maybe_ready = False  # every ready job is placed now
                return
            if past_the_room and not plan.placements:
                # Nothing behind the heads fits the room left either. That read skips
                # every ready job too big for the room: not again in every cycle of a
                # busy yard, only once the room grows or after ROOM_SEARCH_PAUSE.
                self._room_search_after = time.monotonic() + ROOM_SEARCH_PAUSE
                self._fruitless_room = room(views)
            if len(plan.placements) < len(candidates):
                # Some heads do not fit the room now. More may wait behind a full window
                # that would: look again past them (once), with the room left.
                if past_the_room or len(candidates) < batch or not self._may_search_room():
                    return
                past_the_room = True
            elif len(placed) < batch:
                return

    def _may_search_room(self) -> bool:
        """Whether to read past the heads for jobs that fit the room left: not when no
        worker has a slot with any CPU and memory free (every job needs some of both),
        nor while a fruitless search is recent, unless the room has grown since."""
        left = room(self._fleet.views())
        if not any(cpu > 0 and memory >= 1 for _, cpu, memory in left):
            return False
        if time.monotonic() >= self._room_search_after:
            return True
        searched = self._fruitless_room
        if left <= searched:
            return False
        return any(
            not any(t == st and cpu <= scpu and mb <= smb for st, scpu, smb in searched)
            for t, cpu, mb in left - searched
        )

    async def _ready_heads(
        self, per_priority: int, fitting: set[tuple[str, float, int]] | None
    ) -> list[Candidate]:
        # Two statements, no transaction around them (round trips are most of a
        # placement's latency): a plain read of the heads, then one UPDATE
        # (``transitions.dispatch``) that re-checks each is still ready and commits
        # before anything is published.
        rows = await reads.ready_heads(self._db.cycle, per_priority=per_priority, fitting=fitting)
        unique = {r["id"]: r for r in rows}  # the two kinds of heads may share jobs
        return [_candidate(r) for r in unique.values()]

    # ------------------------------------------------------------ parking

    async def _park(self, views: list[WorkerView]) -> bool:
        """Park the ready jobs, from the heads back, that no live worker could run even
        when empty, a window per priority at a time until a window holds fewer, each with
        why it waits. False if none was parked (rows held by someone else, say)."""
        fleet = capacities(views)
        reasons, other_reason = fits_nowhere_templates(views)
        parked = 0
        while True:
            n = await parking.park_unfittable(
                self._db.cycle, fleet, window=PARK_WINDOW, reasons=reasons,
                other_reason=other_reason,
            )  # fmt: skip
            parked += n
            if n < PARK_WINDOW:
                break
        if parked:
            log.info("parked %d ready job(s) that fit no live worker", parked)
        return parked > 0

    async def _unpark_if_the_fleet_grew(self) -> None:
        """A worker joined, or runs more types or has more room than before: the parked
        jobs that fit now are claimable again (statements over the parked ones only)."""
        fleet = capacities(self._fleet.views())
        grew = self._capacities_seen is None or not fleet <= self._capacities_seen
        self._capacities_seen = fleet
        if not grew or not fleet:
            return
        if unparked := await parking.unpark_fitting(self._db.cycle, fleet, chunk=UNPARK_CHUNK):
            log.info("un-parked %d ready job(s) that a live worker can run now", unparked)
            await self._reasons.load()  # theirs were cleared with them
            self.maybe_ready = True

    def _publish(self, placed: list[Placed], now: datetime) -> list[tuple[Placed, str]]:
        """Announce the committed dispatches and publish them, confirms awaited aside.
        Returns the placements whose dispatch could not be built, with why: the others
        go out without them."""
        lease = self._settings.worker_lease_seconds
        lease_expires_at = now + timedelta(seconds=lease)
        per_worker: dict[str, list[JobDispatch]] = {}
        undispatchable: list[tuple[Placed, str]] = []
        for p in placed:
            try:
                dispatch = _dispatch_message(p, now, lease, lease_expires_at)
            except ValidationError as exc:  # a row the message schema refuses
                undispatchable.append(
                    (p, f"its dispatch cannot be built: {validation_summary(exc)}")
                )
                continue
            per_worker.setdefault(p.worker_id, []).append(dispatch)
        by_id = {p.id: p for p in placed}
        # Each worker's dispatches travel together (a batch per worker per cycle).
        messages: list[tuple[_Message, str]] = []
        carried: list[list[Placed]] = []  # the placements each message carries
        for worker_id, dispatches in per_worker.items():
            for message, key in dispatches_for(worker_id, dispatches):
                messages.append((message, key))
                carried.append([by_id[d.job_id] for d in unpack(message)])  # type: ignore[arg-type]
        # The confirms are awaited beside the loop: the next cycle (the next hint, the
        # reports of what just started) does not wait a broker round trip. Their events
        # go out now, in commit order: they are committed, and a later event of the same
        # job (its completion) must not overtake them. A refused dispatch is followed by
        # its running -> ready event when it is undone.
        self.announce(transitions.dispatched_events(placed))
        task = asyncio.create_task(self._confirm(messages, carried))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)
        return undispatchable

    async def _fail_undispatchable(self, undispatchable: list[tuple[Placed, str]]) -> None:
        """Fail, each alone and with why, the jobs whose dispatch could not be built (a
        payload stored by hand or by another version that the message schema refuses):
        another attempt would build the same message."""
        for p, error in undispatchable:
            log.error("job %s attempt %d not dispatchable, failing it: %s", p.id, p.attempts,
                      error)  # fmt: skip
        async with self._db.session() as session:
            events = await transitions.fail_undispatchable(session, undispatchable)
            await session.commit()
        self._fleet.release([p for p, _ in undispatchable])
        self.announce(events)

    async def _confirm(
        self, messages: list[tuple[_Message, str]], carried: list[list[Placed]]
    ) -> None:
        """Await one placement's dispatch confirms. What the broker did not confirm is
        undone by the next cycle (``undo_unconfirmed``)."""
        try:
            results: list[object] = list(await self._broker.publish_each(messages))
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

    async def undo_unconfirmed(self) -> bool:
        """Put back the placements whose dispatch publish failed (True if there were).
        A failed confirm does not prove the message was lost: the worker is told to drop
        that attempt should it arrive, and the job goes back to ready (the undo, and
        forgetting the assignment, are fenced by attempt)."""
        if not self._unconfirmed:
            return False
        # Taken out first: a confirm that fails during the awaits below adds to a new list.
        failed, self._unconfirmed = self._unconfirmed, []
        try:
            self._outbox.put([JobCancel(job_id=p.id, attempt=p.attempts) for p in failed])
            async with self._db.session() as session:
                undone = await transitions.undo_dispatch(session, failed)
                await session.commit()
        except BaseException:
            self._unconfirmed[:0] = failed  # not undone: the next cycle tries again
            raise
        self._fleet.release(failed)
        self.maybe_ready = True
        self.announce(undone)
        return True


def _candidate(r: Mapping[str, Any]) -> Candidate:
    return Candidate(
        r["id"], r["type"], r["priority"], r["cpu_units"], r["memory_mb"], r["run_at"],
        r.get("ready_at"),
    )  # fmt: skip


def _dispatch_message(
    p: Placed, now: datetime, lease: float, lease_expires_at: datetime
) -> JobDispatch:
    return JobDispatch(
        ts=now,
        job_id=p.id,
        attempt=p.attempts,
        type=p.type,
        payload=p.payload,
        resources=_resources(p.cpu_units, p.memory_mb),
        timeout_seconds=p.timeout_seconds,
        lease_expires_at=lease_expires_at,
        lease_seconds=lease,
    )


@functools.lru_cache(maxsize=1024)
def _resources(cpu_units: float, memory_mb: int) -> ResourceSpec:
    """Validated once per shape (most jobs share a few; the model is frozen). A shape
    it refuses raises each time, and is not kept."""
    return ResourceSpec(cpu_units=cpu_units, memory_mb=memory_mb)
