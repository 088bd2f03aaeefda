"""The scheduler: one active instance (``leadership``), the others stand by.

The active one consumes ``<ns>.scheduler`` (job.submitted, job.status, heartbeats,
progress) into an inbox and runs a cycle whenever a message arrives or the tick passes:

1. apply the inbox: attempt reports (fenced by attempt number), progress and
   heartbeats; commit; ack those messages;
2. declare lost what a dead worker held or what a live worker never received, and
   retry or fail it like a failed attempt (``fleet``);
3. promote delayed / backoff jobs whose time has come, fire due schedules (``timed``);
4. publish the ``job.state`` events of all of it, in commit order;
5. put back the dispatches the broker refused, or else place ready jobs (``dispatch``,
   ``placement``): mark them running with a new attempt number, commit, publish;
6. re-send cancels, fail a slice of the dependents failed jobs left waiting (a long
   cascade), publish monitoring, start retention and vacuum (``maintenance``).

Everything it knows in memory (workers, allocations) is rebuilt from the database
when it takes over, so a standby that takes over continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from uuid import UUID

from sqlalchemy.exc import SQLAlchemyError

from services.scheduler.database import Database
from services.scheduler.dispatch import Dispatcher
from services.scheduler.fleet import Fleet, save_workers
from services.scheduler.leadership import Leadership, LeadershipLost
from services.scheduler.maintenance import Maintenance
from services.scheduler.timed import TimedWork
from shared.broker import Broker, Consumer, Delivery, Topology, ack_all
from shared.db import RAW_DB_ERRORS, fetch, is_db_outage
from shared.isolation import Backoff, BatchHeldBack, apply_isolating
from shared.jobs import transitions
from shared.jobs.annotations import save_progress
from shared.messages import (
    JobProgress,
    JobStateChanged,
    JobStatusReport,
    JobSubmitted,
    WorkerHeartbeat,
)
from shared.outbox import Outbox
from shared.settings import Settings
from shared.states import JobStatus

log = logging.getLogger("switchyard.scheduler")
DEAD = (JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Received:
    """One cycle's messages, by what they ask for."""

    submitted: bool = False  # a job was submitted: the ready queue may hold it
    reports: list[JobStatusReport] = field(default_factory=list)
    beats: dict[str, WorkerHeartbeat] = field(default_factory=dict)  # the latest per worker
    progress: dict[tuple[UUID, int], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def sort(cls, messages: Sequence[Any]) -> Received:
        received = cls()
        for msg in messages:
            if isinstance(msg, JobSubmitted):
                received.submitted = True
            elif isinstance(msg, JobStatusReport):
                received.reports.append(msg)
            elif isinstance(msg, WorkerHeartbeat):
                received.beats[msg.worker_id] = msg
            elif isinstance(msg, JobProgress):
                received.progress[(msg.job_id, msg.attempt)] = {
                    "done": msg.done,
                    "total": msg.total,
                    "message": msg.message,
                    "ts": msg.ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                }
        return received


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
        self.db = Database(settings)
        self.rng = random.Random()  # retry jitter
        self.leadership = Leadership(settings)
        self.fleet = Fleet(settings, self.db, self.outbox, rng=self.rng)
        self.dispatch = Dispatcher(settings, self.db, self.broker, self.outbox, self.fleet)
        self.timed = TimedWork(settings, self.db)
        self.maintenance = Maintenance(settings, self.db, self.outbox, self.fleet)
        self.inbox: list[Delivery] = []  # delivered, not yet applied (unacked)
        self.wake = asyncio.Event()
        # Between tries of an inbox the database refuses for a reason no message explains.
        self.held_back = Backoff()
        # Dependents of failed jobs queued to fail (a long cascade, in slices): looked
        # for once a tick (an API request may have queued some), after a cycle that
        # failed or cancelled a job, and every cycle while some are left.
        self.dependents_left = True
        self.dependents_paused_until = 0.0  # after a slice that failed: a second's rest

    # ------------------------------------------------------------ standing by, leading

    async def run(self, stop: asyncio.Event) -> None:
        async with self.db.open():
            try:
                async with self.broker:
                    self.outbox.start()
                    while not stop.is_set():
                        await self.leadership.wait(stop)
                        if stop.is_set():
                            break
                        try:
                            await self._lead(stop)
                        except (LeadershipLost, SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                            # Another instance may be active now (or the take-over could
                            # not read the database): stop acting at once, forget what we
                            # knew, and stand by again (our unacked messages go back to the
                            # queue for whoever leads).
                            log.error("%s; standing by again", exc)
                            self._stand_down()
                            await self.db.cycle.release()  # a standby holds none
                    await self.outbox.close()
            finally:
                await self.leadership.close()

    def _stand_down(self) -> None:
        self.leadership.abandon()
        self.dependents_left = True
        self.fleet.forget()
        self.inbox.clear()
        self.dispatch.forget()

    async def _lead(self, stop: asyncio.Event) -> None:
        await self._take_over()
        consumer: Consumer = await self.broker.consume(
            self.broker.topology.scheduler_queue,
            Topology.SCHEDULER_BINDINGS,
            self._on_delivery,
            prefetch=5000,
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
                await self.leadership.check()
                try:
                    await self.cycle()
                    self.held_back.reset()
                except BatchHeldBack:
                    # A read-only database, a missing column, lost privileges: the inbox
                    # is kept (unacked, nothing dead-lettered) and tried again, less
                    # often while it lasts (apply_isolating logged why).
                    await asyncio.sleep(self.held_back.next())
                    self.wake.set()
                except (SQLAlchemyError, *RAW_DB_ERRORS) as exc:
                    # Outage, deadlock victim, serialization failure: nothing was
                    # committed for the failed step; the next cycle redoes it.
                    what = "database unavailable" if is_db_outage(exc) else "cycle failed"
                    # (A timeout's text is empty: its name says what happened.)
                    log.warning("%s (%s); retrying", what, str(exc) or repr(exc))
                    await asyncio.sleep(0.5)
                    self.wake.set()
                except LeadershipLost:
                    raise
                except Exception:
                    # Not the database's (a bug, a broker that would not take a dead
                    # letter): the inbox is kept, so nothing is lost; the loop goes on
                    # rather than stop the yard (messages are isolated in _apply_inbox).
                    log.exception("cycle failed; retrying")
                    await asyncio.sleep(0.5)
                    self.wake.set()
        finally:
            await consumer.close()
            await self.dispatch.settle(stop)
            await self.maintenance.stop()

    async def _take_over(self) -> None:
        """Workers and allocations as the database has them."""
        await self.dispatch.take_over()
        await self.fleet.load()
        log.info(
            "took over: %d live worker(s), %d running job(s)",
            len(self.fleet.workers),
            len(self.fleet.assignments),
        )

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.inbox.append(delivery)
        self.wake.set()

    # ------------------------------------------------------------ the cycle

    async def cycle(self) -> None:
        events = await self._apply_inbox()
        try:
            events.extend(await self.fleet.handle_losses())
            if self.timed.take_turn():
                # Also the safety net for jobs whose wake-up hint was never published.
                self.dispatch.maybe_ready = True
                events.extend(await self.timed.run())
                self.dependents_left = True
        except BaseException:
            # What is committed keeps its events even when a later step fails.
            self.dispatch.announce(events)
            raise
        # A job that ended failed or cancelled may have queued dependents.
        self.dependents_left |= any(e.new_status in DEAD for e in events)
        # Published together, before this cycle's dispatches (as one batch per kind).
        self.dispatch.announce(events)
        # A cycle that put refused dispatches back does not place: they are placed again
        # from the next cycle on (a message or the tick), not in a loop at broker speed.
        if not await self.dispatch.undo_unconfirmed():
            await self.dispatch.place()
        await self.fleet.send_cancels()
        if self._dependents_due():
            await self._fail_dependents_left()
        await self.maintenance.monitor()
        self.maintenance.start_due_tasks()
        if self._dependents_due():
            self.wake.set()  # the next slice in the next cycle, after its inbox

    def _dependents_due(self) -> bool:
        return self.dependents_left and time.monotonic() >= self.dependents_paused_until

    async def _fail_dependents_left(self) -> None:
        """One slice of the queued dependents of failed and cancelled jobs (committed),
        after the cycle's placement: a slice that fails (rows a bulk cancel holds past
        the lock timeout, a deadlock with one) is logged and tried again a second
        later, and holds back nothing else."""
        try:
            async with self.db.session() as session:
                await fetch(session, "SET LOCAL lock_timeout = '2s'")
                events, left = await transitions.fail_queued_dependents(session)
                await session.commit()
        except (SQLAlchemyError, *RAW_DB_ERRORS) as exc:
            log.warning("failing the dependents of failed jobs: %s; again in a second",
                        str(exc) or repr(exc))  # fmt: skip
            self.dependents_paused_until = time.monotonic() + 1.0
            return
        self.dependents_left = left
        self.dispatch.announce(events)

    async def _apply_inbox(self) -> list[JobStateChanged]:
        """Apply what the inbox holds, commit, ack; returns the committed events.

        A message the database refuses for its values (one that slipped past the
        schema) while the rest applies is found by halving the batch, tried a few times
        on its own and dead-lettered with the error; the rest is applied and acked. An
        outage, a deadlock, or an error no single message explains (``apply_isolating``
        raises BatchHeldBack) keeps the whole batch (unacked) for a later cycle."""
        batch, self.inbox = self.inbox, []
        messages = [m for delivery in batch for m in delivery.messages]
        received = Received.sort(messages)
        if received.submitted:
            self.dispatch.maybe_ready = True
        for hb in received.beats.values():
            self.fleet.register_heartbeat(hb)
        events: list[JobStateChanged] = []

        async def apply(some: Sequence[Any]) -> None:
            await self._apply(Received.sort(some), events)

        try:
            await apply_isolating(
                messages, apply, dead_letter=self._dead_letter, what="inbox messages"
            )
        except BaseException:
            self.inbox[:0] = batch  # not (all) applied: keep them (unacked) for the next cycle
            self.dispatch.announce(events)  # what was applied (the fence ignores it next time)
            raise
        await ack_all(batch)
        return events

    async def _dead_letter(self, message: Any, reason: str) -> None:
        await self.broker.dead_letter_message(
            message, reason=reason, queue=self.broker.topology.scheduler_queue
        )

    async def _apply(self, received: Received, events: list[JobStateChanged]) -> None:
        """Progress, then starts and completions (nearly every report), each one
        statement on the cycle's connection; the other reports, with heartbeats, in a
        session. Each outcome counts once committed (its events are added to
        ``events`` then): a batch kept for the next cycle after a failure is applied
        again, and the fence then ignores what had already been applied."""
        successes, others = transitions.split_reports(received.reports)
        if received.progress:
            # First: a job's last progress is stored before its completion (sent after
            # it, often in the same inbox) commits, so whoever sees the job completed
            # sees its final progress. (Fenced by attempt only: it lands on a job that
            # has ended too.)
            await save_progress(self.db.cycle, received.progress)
        if successes:
            outcome = await transitions.apply_successes(self.db.cycle, successes)
            self.fleet.free(outcome.freed)
            events.extend(outcome.events)
        if others or received.beats:
            async with self.db.session() as session:
                outcome = await transitions.apply_reports(session, others, rng=self.rng)
                await save_workers(session, list(received.beats.values()))
                await session.commit()
            self.fleet.free(outcome.freed)
            events.extend(outcome.events)
