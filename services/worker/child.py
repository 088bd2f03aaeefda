"""The code of one warm child process of the worker's process pool.

A child imports the worker's task modules once, then runs attempts one at a time on its
main thread, as the worker's threads do (same ``run_task``, same ``TaskContext``): its
log lines, progress and the outcome go back over a pipe as plain tuples; a reader
thread watches the pipe from the parent while the task runs, so that the child leaves
at once when the worker is gone.

Stopping: SIGTERM (a timeout, a cancel, the worker's shutdown) sets the running
attempt's cancel flag and raises :class:`Terminated` in the task, so its ``finally``
blocks run and it returns; the child then exits (a child whose task was interrupted is
never reused); an idle child just leaves. The parent signals the child's process group
(the child leads one), so what a task forked goes with it, and sends SIGKILL to a group
whose child is still alive after the grace. The child adopts what leaves the group (a
subreaper: ``process_tree``) and kills whatever its task left running when the attempt
ends, before it reports the end, and when it leaves.
SIGINT is ignored (and the child's own group keeps a Ctrl-C in the worker's terminal
from reaching it at all): the worker alone decides, by its drain, what happens to the
attempts.
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

from services.worker import process_tree
from services.worker.progress import ProgressThrottle
from services.worker.runner import Outcome, run_task, worker_registry
from shared.tasks import TaskContext, TaskLogger, TaskRegistry

# What the parent sends (tuples: pickled by multiprocessing, nothing of ours inside).
RUN = "run"  # (RUN, job_id, attempt, task type, payload)
EXIT = "exit"  # (EXIT,): leave once idle
# A cancel or a timeout is no message: it is SIGTERM (see the module's docstring).
# What the child sends.
READY = "ready"  # (READY, pid)
# A log line and a progress update name their attempt: a thread the task left running
# may still log while the child runs the next attempt.
LOG = "log"  # (LOG, job_id, attempt, seq, level, message)
PROGRESS = "progress"  # (PROGRESS, job_id, attempt, done, total, message)
OUTCOME = "outcome"  # (OUTCOME, Outcome fields as a dict)
LEAVING = "leaving"  # (LEAVING,): it leaves after this attempt; give it no other


class Terminated(BaseException):
    """Raised in the task by SIGTERM: a BaseException, so ``except Exception`` in task
    code does not swallow the termination."""


def child_main(modules: list[str], demo: bool, inbox: Connection, outbox: Connection) -> None:
    """The child's code (``switchyard._child.main`` calls it)."""
    # Its own process group: the parent signals the group, so processes a task starts
    # (a fork, multiprocessing) are terminated and killed with it, never left running.
    os.setpgrp()
    # And what leaves the group (a new session, a double fork) stays under it.
    process_tree.become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = worker_registry(modules, demo=demo)
    send_lock = threading.Lock()

    def send(item: tuple[Any, ...]) -> None:
        with send_lock:  # a task may log from threads of its own
            outbox.send(item)

    runs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    cancelled = threading.Event()  # the running attempt's flag (one attempt at a time)
    terminated = threading.Event()  # SIGTERM came: leave after this attempt
    in_task = threading.Event()  # SIGTERM interrupts an attempt; an idle child just leaves
    interrupted = threading.Event()  # SIGTERM was raised into the attempt

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        cancelled.set()
        terminated.set()
        if in_task.is_set():
            interrupted.set()
            raise Terminated("the worker terminated the attempt")
        runs.put(None)  # idle: leave (SimpleQueue.put may be called from a handler)

    signal.signal(signal.SIGTERM, on_sigterm)

    def read_parent() -> None:
        """Take the parent's messages while the main thread runs a task; the parent
        gone (EOF) means nobody can use a result: leave at once, never an orphan."""
        while True:
            try:
                item = inbox.recv()
            except (EOFError, OSError):
                # The worker died: nothing the task started outlives it; what outlasts
                # a second of killing is in our group, which goes with us.
                if not process_tree.end_own_descendants():
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(0)
            if item[0] == RUN:
                runs.put(item)
            else:
                runs.put(None)
                return

    threading.Thread(target=read_parent, name="parent-reader", daemon=True).start()
    send((READY, os.getpid()))
    try:
        while not terminated.is_set() and (item := runs.get()) is not None:
            _, job_id, attempt, task_type, payload = item
            cancelled.clear()
            process_tree.become_subreaper()  # again: a task may have turned it off
            # Thinned here, before the pipe; the worker passes on what it hears.
            progress = ProgressThrottle()
            in_task.set()
            try:
                if terminated.is_set():  # SIGTERM just before: do not start the task
                    raise Terminated("the worker terminated the attempt")
                outcome = _run_one(
                    registry, send, cancelled, progress, job_id, attempt, task_type, payload
                )
                in_task.clear()
            except Terminated:  # outside the task's own code (run_task's handlers)
                in_task.clear()
                interrupted.set()
            if (held := progress.take_held()) is not None:  # the last figures, before the end
                send((PROGRESS, job_id, attempt, *held))
            if interrupted.is_set():
                # Whatever the task returned after SIGTERM reached it (it may catch
                # BaseException) is no success, as a thread's result after its timeout
                # is none: the worker reports the timeout or the cancel. An attempt that
                # ended before SIGTERM keeps its outcome, which the worker reports.
                outcome = INTERRUPTED
            # Nothing the attempt started outlives it, before its slot is free. What
            # outlasts a second of killing (a process that forks and exits in a loop
            # in our group) goes with this child: it leaves, and the worker kills its
            # group and starts another.
            if not process_tree.end_own_descendants():
                terminated.set()
                send((LEAVING,))  # before the outcome frees it: no next attempt here
            send((OUTCOME, asdict(outcome)))
    except Terminated:
        pass  # between two attempts: leave
    finally:
        process_tree.end_own_descendants()
        outbox.close()


# What an attempt interrupted by SIGTERM ends with.
INTERRUPTED = Outcome(ok=False, error="terminated", cancelled=True)


def _plain_number(value: Any) -> float | str:
    """A progress figure as a plain float for the pipe: whatever the task passed (a
    numpy scalar, a Decimal, an object of its own) must not be pickled to the worker,
    which might not unpickle it. What is no number goes as its text, and the worker
    refuses it as it refuses a thread's (``JobProgress``'s validation, a warning)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _run_one(
    registry: TaskRegistry,
    send: Any,
    cancelled: threading.Event,
    progress: ProgressThrottle,
    job_id: UUID,
    attempt: int,
    task_type: str,
    payload: dict[str, Any],
) -> Outcome:
    definition = registry.get(task_type)
    if definition is None:  # the worker checked; a module that registers lazily, say
        return Outcome(ok=False, error=f"task type {task_type!r} is not registered in the child")

    # Only plain values cross the pipe (str, float, None, and the attempt's id as the
    # worker sent it): as on a thread, the text of whatever the task passes, so the
    # worker never unpickles a type of the task's.
    def emit_log(seq: int, level: str, message: str) -> None:
        send((LOG, job_id, attempt, int(seq), str(level), str(message)))

    def report_progress(done: float, total: float | None, message: str | None) -> None:
        # Made plain at the call (a message that is no text raises into the task, as on
        # a thread), so what is held back is sent as it is.
        figures = (
            _plain_number(done),
            None if total is None else _plain_number(total),
            None if message is None else str(message),
        )
        if (due := progress.offer(*figures)) is not None:  # type: ignore[arg-type]
            send((PROGRESS, job_id, attempt, *due))

    ctx = TaskContext(
        job_id=job_id,
        attempt=attempt,
        log=TaskLogger(emit_log),
        cancelled=cancelled,
        _report_progress=report_progress,
    )
    return run_task(definition, ctx, payload)
