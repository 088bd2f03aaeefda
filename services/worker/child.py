"""The code of one warm child process of the worker's process pool.

A child imports the worker's task modules once, then runs attempts one at a time on its
main thread, as the worker's threads do (same ``run_task``, same ``TaskContext``): its
log lines, progress and the outcome go back over a pipe as plain tuples; a reader
thread watches the pipe from the parent while the task runs, so that the child leaves
at once when the worker is gone.

Stopping: SIGTERM (a timeout, a cancel, the worker's shutdown) sets the running
attempt's cancel flag and raises :class:`Terminated` in the task, so its ``finally``
blocks run and it returns; the child then exits (a child whose task was interrupted is
never reused). The parent sends SIGKILL to one that is still alive after the grace.
SIGINT is ignored: a Ctrl-C in the worker's terminal reaches the whole process group,
and the worker alone decides (by its drain) what happens to the attempts.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any
from uuid import UUID

from services.worker.runner import Outcome, run_task
from shared import demo_tasks
from shared.tasks import TaskContext, TaskLogger, TaskRegistry, load_task_modules

# What the parent sends (tuples: pickled by multiprocessing, nothing of ours inside).
RUN = "run"  # (RUN, job_id, attempt, task type, payload)
EXIT = "exit"  # (EXIT,): leave once idle
# A cancel or a timeout is no message: it is SIGTERM (see the module's docstring).
# What the child sends.
READY = "ready"  # (READY, pid)
LOG = "log"  # (LOG, seq, level, message)
PROGRESS = "progress"  # (PROGRESS, done, total, message)
OUTCOME = "outcome"  # (OUTCOME, Outcome fields as a dict)


class Terminated(BaseException):
    """Raised in the task by SIGTERM: a BaseException, so ``except Exception`` in task
    code does not swallow the termination."""


def registry_from_modules(modules: list[str], demo: bool) -> TaskRegistry:
    """The registry a worker with these task modules (and the demo tasks or not) has."""
    registry = TaskRegistry()
    if demo:
        registry.include(demo_tasks.registry)
    load_task_modules(modules, registry)
    return registry


def child_main(modules: list[str], demo: bool, inbox: Connection, outbox: Connection) -> None:
    """The child's code (``switchyard._child.main`` calls it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = registry_from_modules(modules, demo)
    send_lock = threading.Lock()

    def send(item: tuple[Any, ...]) -> None:
        with send_lock:  # a task may log from threads of its own
            outbox.send(item)

    runs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    cancelled = threading.Event()  # the running attempt's flag (one attempt at a time)
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        cancelled.set()
        terminated.set()
        raise Terminated("the worker terminated the attempt")

    signal.signal(signal.SIGTERM, on_sigterm)

    def read_parent() -> None:
        """Take the parent's messages while the main thread runs a task; the parent
        gone (EOF) means nobody can use a result: leave at once, never an orphan."""
        while True:
            try:
                item = inbox.recv()
            except (EOFError, OSError):
                os._exit(0)
            if item[0] == RUN:
                runs.put(item)
            else:
                runs.put(None)
                return

    threading.Thread(target=read_parent, name="parent-reader", daemon=True).start()
    send((READY, os.getpid()))
    try:
        while (item := runs.get()) is not None:
            _, job_id, attempt, task_type, payload = item
            cancelled.clear()
            outcome = _run_one(registry, send, cancelled, job_id, attempt, task_type, payload)
            send((OUTCOME, asdict(outcome)))
            if terminated.is_set():
                break  # the task was interrupted: its state is nobody's to trust
    except Terminated:
        pass  # idle when terminated (the worker shuts down): leave
    finally:
        outbox.close()


def _run_one(
    registry: TaskRegistry,
    send: Any,
    cancelled: threading.Event,
    job_id: UUID,
    attempt: int,
    task_type: str,
    payload: dict[str, Any],
) -> Outcome:
    definition = registry.get(task_type)
    if definition is None:  # the worker checked; a module that registers lazily, say
        return Outcome(ok=False, error=f"task type {task_type!r} is not registered in the child")

    def emit_log(seq: int, level: str, message: str) -> None:
        send((LOG, seq, level, str(message)))

    def report_progress(done: float, total: float | None, message: str | None) -> None:
        send((PROGRESS, done, total, message))

    ctx = TaskContext(
        job_id=job_id,
        attempt=attempt,
        log=TaskLogger(emit_log),
        cancelled=cancelled,
        _report_progress=report_progress,
    )
    try:
        return run_task(definition, ctx, payload)
    except Terminated:  # SIGTERM between run_task's own handlers
        return Outcome(ok=False, error="terminated", cancelled=True)
