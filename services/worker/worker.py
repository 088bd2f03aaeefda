"""The worker: consumes its dispatch queue, runs jobs on a thread pool, reports back.

* The event loop alone talks to RabbitMQ; task threads hand log lines, progress and
  outcomes back through a ``ToLoop`` (one wake-up of the loop per burst).
* Dispatches are acked on receipt (a job may outlive RabbitMQ's consumer_timeout); the
  database, not the queue, is the truth: if this process dies, the scheduler sees the
  heartbeats stop and retries its jobs elsewhere.
* Fencing: a dispatch already seen (duplicate delivery) is ignored; one whose lease
  has expired before it arrived is handed back unrun (the scheduler has, or will have,
  moved the job on, and ignores reports for a superseded attempt).
* Timeout / cancel: the task's ``ctx.cancelled`` is set; if its thread has not returned
  after ``cancel_grace_seconds`` the attempt is reported ended anyway and the thread is
  counted as *stuck*: its cpu, memory and slot stay reserved (reported in heartbeats)
  until it returns, so the worker is never overcommitted by a thread that will not stop.
* Process isolation (``@task(isolation="process")`` or ``--isolation process``): the
  attempt runs in a warm child of ``ProcessPool`` instead; a timeout or cancel
  terminates the child (SIGTERM, SIGKILL after ``cancel_grace_seconds``) and the attempt
  ends when it has exited, so nothing is ever stuck; its memory is a limit. A pool that
  can no longer start children stops the worker (exit code 1, for its supervisor to
  restart it) rather than hand its process attempts back for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psutil

from services.worker.attempt import (
    ChildListener,
    Running,
    attempt_usage,
    call_now,
    end_report,
    progress_update,
    reporters,
    run_unless_ended,
    status_report,
    thread_outcome,
    unsent_bytes,
)
from services.worker.holdings import Holdings
from services.worker.process_pool import ProcessPool
from services.worker.progress import ProgressThrottle
from services.worker.runner import Outcome, ToLoop
from shared.bodies import compact_worker_chunk
from shared.broker import Broker, Consumer, Delivery, Topology
from shared.catalog import announce_task_types
from shared.db import create_engine, create_sessionmaker
from shared.messages import (
    JobCancel,
    JobDispatch,
    JobProgress,
    JobStatusReport,
    WorkerCapacity,
    WorkerHeartbeat,
    _Message,
)
from shared.outbox import Outbox
from shared.service import StartupError
from shared.settings import Settings
from shared.tasks import TaskContext, TaskDefinition, TaskLogger, TaskRegistry

log = logging.getLogger("switchyard.worker")

SEEN_MEMORY = 10_000  # (job, attempt) pairs remembered for duplicate detection
# Seconds the outbox waits after a quiet moment: a short job's "started" and its end
# then go together, as one report (fold_starts), and the log lines and reports of the
# jobs that ran meanwhile go as a body of each kind (kinds_together): a few messages,
# one scheduler cycle, one logger write.
OUTBOX_LINGER = 0.002
# Messages waiting in the outbox when the last running attempt ends, from which they
# go at once instead of lingering: the reports of several attempts (a lone attempt
# leaves its start and its end: two, which linger; with a log line, a progress update
# or a heartbeat beside them they go at once too).
HURRY_AT = 3
# What the worker's unsent messages may weigh (about their bytes) before a task that
# logs waits for the broker to take them: its lines then cost about this much memory
# (a soft bound: see Outbox.wait_for_room), and a heartbeat put behind them goes out
# within a few chunks' publishing.
MAX_UNSENT_BYTES = 2**20
# --isolation / SWITCHYARD_WORKER_ISOLATION: "task" lets each @task choose.
WORKER_ISOLATIONS = ("task", "thread", "process")


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: TaskRegistry,
        worker_id: str,
        threads: int,
        cpu_units: float,
        memory_mb: int,
        isolation: str = "task",
        task_modules: list[str] | None = None,
        demo_tasks: bool = False,
    ) -> None:
        """``task_modules`` and ``demo_tasks``: what the registry was loaded from, which a
        process-pool child loads too."""
        if isolation not in WORKER_ISOLATIONS:
            choices = ", ".join(WORKER_ISOLATIONS)
            raise ValueError(f"isolation {isolation!r} is not one of {choices}")
        self.settings = settings
        self.registry = registry
        self.worker_id = worker_id
        self.capacity = WorkerCapacity(cpu_units=cpu_units, memory_mb=memory_mb, slots=threads)
        self.broker = Broker(
            settings.amqp_url,
            settings.namespace,
            name=f"switchyard-worker-{worker_id}",
            publish_timeout=settings.publish_timeout_seconds,
        )
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="task")
        self.held = Holdings(self.capacity)
        self.seen: OrderedDict[tuple[UUID, int], None] = OrderedDict()
        # Cancels that arrived before their dispatch (they come from another publisher).
        self.early_cancels: OrderedDict[UUID, int] = OrderedDict()
        # Reports and log lines exist nowhere else until the scheduler and the logger
        # have stored them: a failed publish is retried, never dropped.
        self.outbox = Outbox(
            self.broker,
            linger=OUTBOX_LINGER,
            retry=True,
            chunk=500,
            compact=compact_worker_chunk,
            weigh=unsent_bytes,
            max_weight=MAX_UNSENT_BYTES,
        )
        self.state = "alive"
        self.started_at = datetime.now(UTC)
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_loop: ToLoop | None = None  # from task threads, once the loop runs
        self._idle = asyncio.Event()
        self._stop_serving: asyncio.Event | None = None  # while serving: set, it stops the worker
        self._process = psutil.Process()
        self.crashed = False
        self.isolation = isolation
        self.pool: ProcessPool | None = None
        if any(self.isolation_of(d) == "process" for d in registry):
            self.pool = ProcessPool(
                modules=list(task_modules or []),
                demo_tasks=demo_tasks,
                size=threads,
                kill_grace=settings.cancel_grace_seconds,
                on_broken=lambda reason: self._stop_crashed(
                    f"process-isolated tasks cannot run on this worker: {reason}"
                ),
                hold_back=self.outbox.wait_for_room,
            )

    def isolation_of(self, definition: TaskDefinition) -> str:
        """Where this worker runs ``definition``'s attempts: its flag, else the task's."""
        return definition.isolation if self.isolation == "task" else self.isolation

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain and return."""
        self._loop = asyncio.get_running_loop()
        self._to_loop = ToLoop(self._loop)
        self.outbox.count_upstream(self._to_loop)  # a thread's lines not yet put
        await self.announce()
        try:
            if self.pool is not None:
                try:
                    await self.pool.start()
                except (RuntimeError, TimeoutError, OSError) as exc:
                    raise StartupError(f"cannot start the process pool: {exc}") from exc
                assert self.pool.from_readers is not None
                self.outbox.count_upstream(self.pool.from_readers)  # a child's lines not yet put
            await self._serve(stop)
        finally:
            if self.pool is not None:
                await self.pool.close()  # (again, on an error path): no child outlives it
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, stop: asyncio.Event) -> None:
        self._stop_serving = stop
        async with self.broker:
            publisher = self.outbox.start()
            heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeat")
            for task in (publisher, heartbeat):
                task.add_done_callback(self._background_died)
            topo = self.broker.topology
            self._consumer = await self.broker.consume(
                topo.worker_queue(self.worker_id),
                Topology.worker_bindings(self.worker_id),
                self._on_delivery,
                prefetch=self.capacity.slots * 2,
                # A queue nobody consumes for an hour (a worker id never reused) goes away.
                arguments={"x-expires": 3_600_000},
            )
            self._send_heartbeat()
            log.info(
                "worker %s ready: %s threads, %g cpu units, %d MB; isolation %s%s; tasks: %s",
                self.worker_id,
                self.capacity.slots,
                self.capacity.cpu_units,
                self.capacity.memory_mb,
                self.isolation,
                f" ({self.pool.size} warm child processes)" if self.pool else "",
                ", ".join(self.registry.names()),
            )
            await stop.wait()
            await self.drain()
            if self.pool is not None:
                await self.pool.close()  # the children of attempts handed back exit first
            heartbeat.cancel()
            self.state = "stopped"
            self._send_heartbeat()
            await self.outbox.close(timeout=10.0)

    def _background_died(self, task: asyncio.Task[None]) -> None:
        """A worker that can no longer report must not keep taking work."""
        if not task.cancelled() and task.exception() is not None:
            self._stop_crashed(f"the {task.get_name()} task died: {task.exception()!r}")

    def _stop_crashed(self, reason: str) -> None:
        """Stop (exit code 1; its supervisor restarts it) rather than run as a zombie: a
        background task died, or attempts can no longer be started here (the process
        pool starts no more children, the thread pool refused one: handing them back
        would bounce them here every cycle, and offering only the other kind of task
        would leave these waiting in silence). A restarted worker gets new pools, or
        says at start why it cannot (exit code 2)."""
        if self._stop_serving is None:  # still starting: ``run`` reports it as a startup error
            return
        log.critical("%s; stopping the worker (its supervisor restarts it)", reason)
        self.crashed = True
        self._stop_serving.set()

    async def announce(self) -> None:
        """Write this worker's task types into ``task_types`` so the API accepts them."""
        engine = create_engine(self.settings, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session:
                await announce_task_types(
                    session, self.registry, announcer=f"worker {self.worker_id}"
                )
                await session.commit()
        finally:
            await engine.dispose()

    async def drain(self) -> None:
        """SIGTERM: stop taking work, let running jobs finish within the grace period,
        then hand back (as failed attempts, retried elsewhere) what still runs."""
        self.state = "draining"
        log.info(
            "draining: %d job(s) running, grace %.0f s",
            len(self.held.running),
            self.settings.worker_grace_seconds,
        )
        if self._consumer is not None:
            await self._consumer.cancel()
        self._send_heartbeat()
        deadline = time.monotonic() + self.settings.worker_grace_seconds
        while self.held.running and time.monotonic() < deadline:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._idle.wait(), timeout=max(0.0, deadline - time.monotonic())
                )
        for run in list(self.held.running.values()):
            # Hand the job back: it goes to another worker without using up an attempt
            # of its retry budget (the attempt number still moves on: fencing holds).
            if run.isolation == "thread":
                run.ctx.cancelled.set()  # a child's flag is its own: SIGTERM sets it
            reason = (
                f"worker {self.worker_id} shut down before the attempt finished "
                f"(grace {self.settings.worker_grace_seconds:g} s)"
            )
            self._report_end(
                run, status_report(self.worker_id, run.dispatch, "handed_back", error=reason)
            )
            if run.child is not None:  # its child is terminated (pool.close waits for it)
                assert self.pool is not None
                self.pool.terminate(run.child)
            elif run.isolation == "thread":
                self.held.stick(run)  # its thread may still run until the process exits

    def pool_threads(self) -> set[threading.Thread]:
        """The task threads of this worker's pool (idle ones end on their own)."""
        return set(self.executor._threads)

    def threads_still_running(self) -> int:
        return sum(
            1
            for r in [*self.held.running.values(), *self.held.stuck.values()]
            if r.future and not r.future.done()
        )

    # ------------------------------------------------------------ messages in

    async def _on_delivery(self, delivery: Delivery) -> None:
        for message in delivery.messages:
            # One message that cannot be taken must not cost the others of its batch.
            try:
                if isinstance(message, JobDispatch):
                    self._accept(message, delivery.received_at)
                elif isinstance(message, JobCancel):
                    self._cancel(message)
            except Exception as exc:
                log.exception("could not take %s", getattr(message, "kind", "a message"))
                if isinstance(message, JobDispatch) and message.job_id not in {
                    k[0] for k in self.held.running
                }:
                    reason = f"worker {self.worker_id} could not take it: {type(exc).__name__}"
                    self._emit(
                        status_report(
                            self.worker_id, message, "handed_back", error=f"{reason}: {exc}"
                        )
                    )
        await delivery.ack()

    def lease_expired(self, dispatch: JobDispatch, received_at: float) -> bool:
        """Whether the dispatch's lease ran out before it could be started: measured
        from its receipt on this process's monotonic clock (the time it waited in the
        queue is the broker's to count: the dispatch's AMQP expiration), never by
        comparing this machine's clock with the scheduler's."""
        return time.monotonic() - received_at > dispatch.lease_seconds

    def _accept(self, dispatch: JobDispatch, received_at: float) -> None:
        key = (dispatch.job_id, dispatch.attempt)
        if key in self.seen:
            log.info("ignoring duplicate dispatch of job %s attempt %d", *key)
            return
        self.seen[key] = None
        while len(self.seen) > SEEN_MEMORY:
            self.seen.popitem(last=False)
        definition = self.registry.get(dispatch.type)
        if self.early_cancels.get(dispatch.job_id, -1) >= dispatch.attempt:
            log.info("job %s attempt %d was cancelled before it arrived", *key)
            self._emit(
                status_report(
                    self.worker_id,
                    dispatch,
                    "cancelled",
                    error="cancelled by request before it started",
                )
            )
            return
        reason = None
        if self.state != "alive":
            reason = f"worker {self.worker_id} is draining"
        elif self.lease_expired(dispatch, received_at):
            reason = "dispatch taken after its lease expired (stale attempt)"
        elif definition is None:
            reason = f"worker {self.worker_id} does not run task type {dispatch.type!r}"
        elif not self.held.fits(dispatch.type, dispatch.resources):
            reason = f"worker {self.worker_id} has no room (threads still stopping)"
        if reason is not None or definition is None:
            log.info("handing back job %s attempt %d: %s", *key, reason)
            self._emit(status_report(self.worker_id, dispatch, "handed_back", error=reason))
            return
        progress = ProgressThrottle()
        run = Running(
            dispatch=dispatch,
            ctx=self._context(dispatch, progress),
            started=time.monotonic(),
            isolation=self.isolation_of(definition),
            progress=progress,
        )
        self.held.start(run)
        try:
            self._start(run, definition)
        except Exception as exc:
            # It holds resources but runs nowhere: give them and the attempt back (else
            # the job stays running here, in every heartbeat), then stop taking work.
            log.exception("job %s attempt %d: could not start it", *key)
            reason = f"worker {self.worker_id} could not start it: {type(exc).__name__}: {exc}"
            self._report_end(
                run, status_report(self.worker_id, dispatch, "handed_back", error=reason)
            )
            self._stop_crashed(f"this worker's thread pool refused an attempt: {exc!r}")
            return
        self._emit(status_report(self.worker_id, dispatch, "started"))

    def _start(self, run: Running, definition: TaskDefinition) -> None:
        """Hand a taken attempt to a task thread or (process isolation) a child, and arm
        its timeout."""
        loop = self._loop
        assert loop is not None
        dispatch = run.dispatch
        if run.isolation == "process":
            start = loop.create_task(self._start_in_child(run), name=f"start-{dispatch.job_id}")
            start.add_done_callback(lambda t: self._child_start_failed(run, t))
        else:
            future = self.executor.submit(run_unless_ended, run, definition)
            run.future = future
            future.add_done_callback(
                lambda f: self._from_thread(self._attempt_ended, run, thread_outcome(f))
            )
        if dispatch.timeout_seconds:
            run.timers.append(loop.call_later(dispatch.timeout_seconds, self._time_out, run))

    def _cancel(self, message: JobCancel) -> None:
        found = False
        for key, run in list(self.held.running.items()):
            if key[0] == message.job_id and key[1] <= message.attempt:
                found = True
                log.info("cancelling job %s attempt %d", *key)
                run.cancel_requested = True
                run.ctx.cancelled.set()
                self._stop(run)
        if not found:
            self.early_cancels[message.job_id] = message.attempt
            while len(self.early_cancels) > SEEN_MEMORY:
                self.early_cancels.popitem(last=False)

    # ------------------------------------------------------------ attempt lifecycle

    def _context(self, dispatch: JobDispatch, progress: ProgressThrottle) -> TaskContext:
        emit_log, report_progress = reporters(
            dispatch, self._from_thread, progress, on_line=self._emit, on_progress=self._progress
        )

        def emit_log_when_there_is_room(seq: int, level: str, message: str) -> None:
            self.outbox.wait_for_room()  # the task's thread waits, not the loop
            emit_log(seq, level, message)

        return TaskContext(
            job_id=dispatch.job_id,
            attempt=dispatch.attempt,
            log=TaskLogger(emit_log_when_there_is_room),
            cancelled=threading.Event(),
            _report_progress=report_progress,
        )

    def _from_thread(self, callback: Any, *args: Any, weight: int = 0) -> None:
        """Hand a task thread's news to the event loop (dropped once the worker has
        exited); ``weight``: what it adds to the unsent messages (a log line's)."""
        if self._to_loop is not None:
            self._to_loop.post(callback, *args, weight=weight)

    def _progress(self, key: tuple[UUID, int], update: JobProgress) -> None:
        run = self.held.running.get(key)
        if run is not None and not run.reported:
            self._emit(update)

    def _time_out(self, run: Running) -> None:
        if run.reported or (run.future is not None and run.future.done()):
            return
        log.info("job %s attempt %d timed out", *run.key)
        run.timed_out = True
        run.ctx.cancelled.set()
        self._stop(run)

    def _stop(self, run: Running) -> None:
        """A timeout or a cancel: a thread is asked (and waited for, then left stuck);
        a child is terminated, and the attempt ends when it has exited."""
        if run.isolation == "thread":
            self._schedule_grace(run)
        elif run.child is not None:
            assert self.pool is not None
            self.pool.terminate(run.child)
        else:  # still waiting for a free child: nothing runs, end it now
            self._report_end(run, end_report(self.worker_id, run, None))

    def _schedule_grace(self, run: Running) -> None:
        loop = self._loop
        assert loop is not None
        run.timers.append(
            loop.call_later(self.settings.cancel_grace_seconds, self._give_up_waiting, run)
        )

    def _give_up_waiting(self, run: Running) -> None:
        """The task ignored its cancelled flag: end the attempt now, keep its resources."""
        if run.reported or (run.future is not None and run.future.done()):
            return
        log.warning(
            "job %s attempt %d did not stop within %.1f s; reporting it ended, its thread is stuck",
            *run.key,
            self.settings.cancel_grace_seconds,
        )
        self._report_end(run, end_report(self.worker_id, run, None))
        self.held.stick(run)

    def _attempt_ended(self, run: Running, outcome: Outcome | None) -> None:
        """An attempt's thread returned, or its child ended it (its outcome, or its exit
        as a failed one): report its end, or free the resources of one reported already."""
        for timer in run.timers:
            timer.cancel()
        # The thread's future holds the callback that holds this run, and a timer that
        # fired its callback's arguments: cycles that would keep the attempt's whole graph
        # (its context, dispatch, payload and outcome) for the cyclic collector, dozens of
        # objects per job, rather than free it once the worker lets go of the run.
        run.timers.clear()
        run.future = None
        run.child = None
        if run.reported:
            # A stuck thread finally returned, or the child of an attempt handed back by
            # the drain has exited: its cpu, memory and slot are free now.
            self.held.release(run.key)
            log.info("job %s attempt %d: its %s ended after its end was reported",
                     *run.key, run.isolation)  # fmt: skip
            if self.state != "stopped":
                self._send_heartbeat()
            return
        held = run.progress.take_held()
        if held is not None and (update := progress_update(run.dispatch, *held)) is not None:
            self._emit(update)
        self._report_end(run, end_report(self.worker_id, run, outcome))

    # ------------------------------------------------------------ process attempts

    async def _start_in_child(self, run: Running) -> None:
        assert self.pool is not None
        child = await self.pool.acquire()
        if run.reported:  # cancelled or timed out while it waited for a child
            return
        run.child = child
        self.pool.run(
            child,
            job_id=run.dispatch.job_id,
            attempt=run.dispatch.attempt,
            task_type=run.dispatch.type,
            payload=run.dispatch.payload,
            memory_mb=run.dispatch.resources.memory_mb,
            listener=ChildListener(
                run,
                # What its reports name: the payload is not kept once it has ended.
                *reporters(
                    run.dispatch.model_copy(update={"payload": {}}),
                    call_now,
                    None,
                    on_line=self._emit,
                    on_progress=self._progress,
                ),
                ended=self._attempt_ended,
            ),
        )

    def _child_start_failed(self, run: Running, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None or run.reported:
            return
        exc = task.exception()
        log.error("job %s attempt %d: could not start it in a child: %r", *run.key, exc)
        reason = f"worker {self.worker_id} could not start it in a child process: {exc!r}"
        self._report_end(
            run, status_report(self.worker_id, run.dispatch, "handed_back", error=reason)
        )

    def _report_end(self, run: Running, report: JobStatusReport) -> None:
        run.reported = True
        self.held.end(run)
        if run.child is not None:
            # Handed back while its child still runs: its resources stay taken (as a
            # stuck thread's) until the child has exited.
            self.held.stick(run)
        self._emit(report)
        if not self.held.running:
            self._idle.set()
            if self.outbox.waiting() >= HURRY_AT:
                # Nothing runs, so no report will join these (a wave of attempts that
                # ended together): they go now, not after the rest of the linger.
                self.outbox.hurry()

    # ------------------------------------------------------------ messages out

    def _emit(self, message: _Message) -> None:
        self.outbox.put([message])

    def _send_heartbeat(self) -> None:
        self._emit(
            WorkerHeartbeat(
                worker_id=self.worker_id,
                state=self.state,  # type: ignore[arg-type]
                capacity=self.capacity,
                allocated=self.held.allocated(),
                stuck=self.held.stuck_total(),
                running=[k[0] for k in self.held.running],
                task_types=self.registry.names(),
                cpu_percent=psutil.cpu_percent(interval=None),
                memory_percent=round(self._process.memory_percent(), 3),
                started_at=self.started_at,
                attempts=attempt_usage(self.pool),
            )
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            self._send_heartbeat()
