"""What a task thread and a process-pool child share: the worker's registry, one task
attempt run and turned into plain data, and the way back to the event loop.

Nothing here touches the broker: a thread (a task's, or a child's reader) reports back
to the event loop, which alone publishes (conventions §5).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from shared import demo_tasks
from shared.jsonvalues import TASK_OUTPUT_JSON, check_json, encoded_within
from shared.messages import MAX_RESULT_BYTES, message_text
from shared.tasks import Cancelled, TaskContext, TaskDefinition, TaskRegistry, load_task_modules
from switchyard import tasks as switchyard_tasks

MAX_TRACEBACK_LINES = 30
# About what a message's ids, kind and times take: a log line weighs this and its text
# (``line_weight``), wherever it waits to be sent.
ENVELOPE_BYTES = 256
# Frames of the code that calls a task: a traceback starts at the task's own code.
_CALLER_FILES = frozenset({__file__, switchyard_tasks.__file__})
log = logging.getLogger("switchyard.worker")


def worker_registry(modules: list[str], *, demo: bool) -> TaskRegistry:
    """The registry of a worker with these task modules (and the demo tasks or not): the
    worker builds it at start, and each process-pool child builds the same one."""
    registry = TaskRegistry()
    if demo:
        registry.include(demo_tasks.registry)
    load_task_modules(modules, registry)
    return registry


class ToLoop:
    """Threads' news for the event loop, run there in the order it was posted.

    The first post of a burst wakes the loop (``call_soon_threadsafe``: a write to its
    self-pipe and a turn of the loop); what threads post until the loop runs the queue
    joins it without waking the loop again. Twenty jobs that end together cost one
    wake-up, not twenty. A post once the loop has closed is dropped: the worker has
    exited and nobody can report it.

    ``weight`` is what the queued news weighs (the ``weight`` each post gave): a
    log line on its way to the outbox is still unsent, and the threads the outbox holds
    back must count it (``Outbox.count_upstream``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: collections.deque[tuple[Callable[..., object], tuple[object, ...], int]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._woken = False  # a run of the queue is due on the loop
        # Two counters, so that each has one writer: the posting threads (under the lock)
        # and the loop. Their difference may be read from any thread.
        self._posted_weight = 0
        self._taken_weight = 0

    @property
    def weight(self) -> int:
        return self._posted_weight - self._taken_weight

    def post(self, callback: Callable[..., object], *args: object, weight: int = 0) -> None:
        with self._lock:
            self._posted_weight += weight
            self._queue.append((callback, args, weight))
            if self._woken:
                return  # the run that is due takes it (it starts after this append)
            self._woken = True
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            self._woken = False  # from here on a post wakes the loop again
        queue = self._queue
        # Only what is queued now, as the loop runs only the callbacks ready when its
        # turn starts: tasks that log faster than the loop sends must not keep it from
        # its timers and sockets (the heartbeat, the outbox). What comes meanwhile has
        # woken the loop for the next run.
        for _ in range(len(queue)):
            callback, args, weight = queue.popleft()
            self._taken_weight += weight
            try:
                callback(*args)
            except Exception:  # as the loop does for a callback of its own: the rest run
                log.exception("callback %r from a thread failed", callback)


def line_weight(text: str) -> int:
    """About what a log line of ``text`` takes in memory and on the wire (its
    characters: a line of wide characters weighs up to four times more)."""
    return ENVELOPE_BYTES + len(text)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    cancelled: bool = False


def run_task(definition: TaskDefinition, ctx: TaskContext, payload: dict[str, Any]) -> Outcome:
    """Call the task; never raises (every failure becomes an Outcome). What it returns
    or raises is made into what every hop can carry (see ``storable_result``)."""
    try:
        return _outcome_of_task(definition, ctx, payload)
    except BaseException as exc:
        # Reading what the task gave back ran the task's own code again (a result's
        # comparisons or items(), an exception's __str__ or __repr__ raising even
        # SystemExit): without an outcome the attempt would never be reported, its job
        # running for ever and its slot held.
        return Outcome(ok=False, error=_text(
            "the task's result or error could not be read: its own code raised "
            f"{_type_name(exc)} while it was read"
        ))  # fmt: skip


def _outcome_of_task(
    definition: TaskDefinition, ctx: TaskContext, payload: dict[str, Any]
) -> Outcome:
    try:
        result = definition.call(ctx, payload)
    except Cancelled:
        return Outcome(ok=False, error="cancelled", cancelled=True)
    except Exception as exc:
        trace = traceback.format_exception(type(exc), exc, _task_frames(exc))
        lines = "".join(trace).splitlines()
        return Outcome(
            ok=False,
            error=_text(f"{type(exc).__name__}: {_describe(exc)}"),
            traceback=_text("\n".join(lines[-MAX_TRACEBACK_LINES:]), keep="tail"),
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by a task
        return Outcome(
            ok=False, error=_text(f"{type(exc).__name__} raised by the task: {_describe(exc)}")
        )
    return storable_result(result)


def _task_frames(exc: BaseException) -> TracebackType | None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _CALLER_FILES:
        tb = tb.tb_next
    return tb


def storable_result(result: Any) -> Outcome:
    """The task's return value as plain JSON the report, the scheduler and jsonb take:
    text made safe, what orjson writes natively taken as it writes it; anything else
    it cannot carry (a type JSON lacks, an integer beyond 64 bits, NaN, nesting too
    deep) fails the attempt with an error that says which, and so does a result over
    MAX_RESULT_BYTES, measured as the report measures it (``encoded_within``)."""
    try:
        plain = check_json(result, TASK_OUTPUT_JSON, where="result")
    except ValueError as exc:
        return Outcome(ok=False, error=_text(f"the task's result cannot be stored as JSON: {exc}"))
    try:
        encoded_within(plain, MAX_RESULT_BYTES, where="the task's result")
    except ValueError as exc:
        return Outcome(
            ok=False,
            error=f"{exc} bytes (return less, or store it elsewhere and return where)",
        )
    return Outcome(ok=True, result=plain)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as inner:  # an exception whose __str__ raises (SystemExit too)
        return f"<unprintable: {_type_name(inner)}>"


def _type_name(exc: BaseException) -> str:
    try:
        return str(type(exc).__name__)
    except BaseException:  # a metaclass of the task's own
        return "an exception"


def _text(value: str, *, keep: Literal["head", "tail"] = "head") -> str:
    return message_text(value, keep=keep)
