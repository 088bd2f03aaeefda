"""One attempt on a worker: the record the worker keeps of it (``Running``) and what the
worker sends about it (status reports, log lines, progress, a child's resource use).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from services.worker.process_pool import Child, ProcessPool
from services.worker.progress import ProgressThrottle
from services.worker.runner import ENVELOPE_BYTES, Outcome, line_weight, run_task
from shared.messages import (
    AttemptUsage,
    JobDispatch,
    JobLog,
    JobProgress,
    JobStatusReport,
    _Message,
    message_text,
)
from shared.tasks import TaskContext, TaskDefinition

log = logging.getLogger("switchyard.worker")
LogSink = Callable[[int, str, str], None]  # (seq, level, message)
ProgressSink = Callable[[float, float | None, str | None], None]  # (done, total, message)


@dataclass
class Running:
    dispatch: JobDispatch
    ctx: TaskContext
    started: float
    # Its task thread's, until that thread returned (None for a child's attempt).
    future: Future[Outcome | None] | None = None
    reported: bool = False  # the attempt's end was reported (thread may still run)
    cancel_requested: bool = False
    timed_out: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    progress: ProgressThrottle = field(default_factory=ProgressThrottle)
    isolation: str = "thread"
    child: Child | None = None  # process isolation: the child running it, once it has one

    @property
    def key(self) -> tuple[UUID, int]:
        return (self.dispatch.job_id, self.dispatch.attempt)


def run_unless_ended(run: Running, definition: TaskDefinition) -> Outcome | None:
    """A task thread's work: the attempt's task, unless its end was reported before a
    thread took it (a pool whose ``submit`` raised may still have queued the work, and
    that attempt has been handed back)."""
    if run.reported:
        return None
    return run_task(definition, run.ctx, run.dispatch.payload)


def thread_outcome(future: Future[Outcome | None]) -> Outcome | None:
    """What a task thread's future holds; its error, should the thread have raised
    (``run_task`` never does), as a failed attempt: never an attempt left unreported."""
    if future.cancelled():
        return None
    exc = future.exception()
    if exc is None:
        return future.result()
    log.error("an attempt's thread raised %s", type(exc).__name__)
    return Outcome(ok=False, error=f"the worker could not run the task: {type(exc).__name__}")


def status_report(
    worker_id: str, dispatch: JobDispatch, status: str, **fields: Any
) -> JobStatusReport:
    """The worker's report on one attempt. What the schema refuses (a result the runner
    let through, say) fails the attempt with the reason, rather than leave it
    unreported."""
    try:
        return JobStatusReport(
            job_id=dispatch.job_id,
            attempt=dispatch.attempt,
            worker_id=worker_id,
            status=status,  # type: ignore[arg-type]
            **fields,
        )
    except ValidationError as exc:
        log.error("job %s attempt %d: report not valid: %s", dispatch.job_id,
                  dispatch.attempt, exc)  # fmt: skip
        return JobStatusReport(
            job_id=dispatch.job_id,
            attempt=dispatch.attempt,
            worker_id=worker_id,
            status="failed" if status in ("completed", "failed") else status,  # type: ignore[arg-type]
            error=message_text(f"the attempt's report could not be sent: {exc}"),
        )


def end_report(worker_id: str, run: Running, outcome: Outcome | None) -> JobStatusReport:
    """How the attempt ended: its outcome, unless a timeout or a cancel came first
    (``outcome`` is None when it ended without one: abandoned, or never started)."""

    def report(status: str, **fields: Any) -> JobStatusReport:
        return status_report(worker_id, run.dispatch, status, **fields)

    if run.isolation == "process" and outcome is not None and outcome.ok:
        # The child sends a success only for an attempt that ended before its
        # SIGTERM: a timeout or cancel that came at that moment finds it done (as a
        # thread's does when its future is done) and does not throw it away.
        return report("completed", result=outcome.result)
    if run.timed_out:
        timeout = run.dispatch.timeout_seconds or 0
        return report("failed", timed_out=True, error=f"timed out after {timeout:g} s")
    if run.cancel_requested or (outcome is not None and outcome.cancelled):
        return report("cancelled", error="cancelled by request")
    if outcome is None:
        return report("failed", error="attempt abandoned")
    if outcome.ok:
        return report("completed", result=outcome.result)
    return report("failed", error=outcome.error, traceback=outcome.traceback)


def log_line(dispatch: JobDispatch, seq: int, level: str, message: str) -> JobLog:
    """One of the task's log lines as every hop can carry it: bad characters replaced,
    an oversize line cut with a marker (never an exception in the task's thread)."""
    return JobLog(
        job_id=dispatch.job_id, type=dispatch.type, attempt=dispatch.attempt, seq=seq,
        level=level, message=message_text(str(message)),
    )  # fmt: skip


def reporters(
    dispatch: JobDispatch,
    deliver: Callable[..., None],
    progress: ProgressThrottle | None,
    *,
    on_line: Callable[[JobLog], None],
    on_progress: Callable[[tuple[UUID, int], JobProgress], None],
) -> tuple[LogSink, ProgressSink]:
    """An attempt's log lines and progress as its task gives them, made messages and
    handed on by ``deliver(callback, *args)`` to ``on_line`` / ``on_progress``: from a
    task thread to the worker's loop, its progress thinned by ``progress`` there, where
    the task reports it; from a child's listener (on the loop already) at once with
    ``call_now``, so they go out before the end its child sent after them (a child thins
    its progress itself: ``progress`` None)."""

    def emit_log(seq: int, level: str, message: str) -> None:
        line = log_line(dispatch, seq, level, message)
        deliver(on_line, line, weight=unsent_bytes(line))

    def report_progress(done: float, total: float | None, message: str | None) -> None:
        # A message that is no text raises into the task at its call.
        figures = (done, total, None if message is None else str(message))
        due = figures if progress is None else progress.offer(*figures)
        if due is not None and (update := progress_update(dispatch, *due)) is not None:
            deliver(on_progress, (dispatch.job_id, dispatch.attempt), update)

    return emit_log, report_progress


def call_now(callback: Callable[..., None], *args: Any, weight: int = 0) -> None:
    """Deliver on the loop at once (a child's news: its reader counted its weight)."""
    callback(*args)


def progress_update(
    dispatch: JobDispatch, done: float, total: float | None, message: str | None
) -> JobProgress | None:
    """The task's progress as a message, or None (logged) for one the schema refuses.
    Never raises: it may run on the loop, for figures the task gave earlier."""
    try:
        return JobProgress(
            job_id=dispatch.job_id,
            type=dispatch.type,
            attempt=dispatch.attempt,
            done=done,
            total=total,
            message=None if message is None else message_text(str(message)),
        )
    except Exception as exc:  # NaN, say: progress is advisory, the job goes on
        log.warning("job %s: progress (%r, %r) not sent: %s", dispatch.job_id, done, total, exc)
        return None


def attempt_usage(pool: ProcessPool | None) -> list[AttemptUsage]:
    """What each process attempt uses now (its child's cpu and memory), for the heartbeat;
    a thread's use cannot be told apart from the worker's own."""
    if pool is None:
        return []
    out = []
    for child, cpu, rss_mb in pool.usage():
        if child.job is None:
            continue
        out.append(
            AttemptUsage(
                job_id=child.job[0],
                attempt=child.job[1],
                pid=child.pid,
                cpu_percent=round(cpu, 1),
                rss_mb=round(rss_mb, 1),
                peak_rss_mb=round(child.peak_rss / 2**20, 1),
            )
        )
    return out


def unsent_bytes(message: _Message) -> int:
    """About what ``message`` takes in the outbox and on the wire: a log line's text
    and its envelope (the lines are what a task can make many and large of)."""
    if type(message) is JobLog:
        return line_weight(message.message)
    return ENVELOPE_BYTES


class ChildListener:
    """One process attempt's news from its child, on the event loop: the same log
    lines, progress and end as a thread's (``Worker._context``'s callbacks). The pool
    keeps it a while after the end, for lines a thread the task left running logs
    late: so it holds neither the attempt nor its payload once ended."""

    def __init__(
        self,
        run: Running,
        on_log: LogSink,
        on_progress: ProgressSink,
        *,
        ended: Callable[[Running, Outcome], None],
    ) -> None:
        self.run: Running | None = run
        self.on_log = on_log
        self.on_progress = on_progress
        self._ended = ended

    def on_end(self, outcome: Outcome) -> None:
        run, self.run = self.run, None
        if run is not None:
            self._ended(run, outcome)
