"""A small pool of warm child processes that run process-isolated attempts.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot kill one child. Here each
child is ours to SIGTERM / SIGKILL, to measure and to replace:

* children come from a ``forkserver`` that imported the task modules once, so a new
  child is warm in milliseconds and shares no file descriptor or lock of the worker;
* one reader thread per child blocks on its pipe and hands each message to the event
  loop through a ``ToLoop`` (as task threads do): the loop never waits on a child;
* a watch on the loop samples each busy child's memory every ``WATCH_INTERVAL``, and
  what the processes its task started hold every ``TREE_INTERVAL``: an attempt whose
  memory grows more than its ``memory_mb`` above the idle child's is killed (SIGKILL,
  with every process under the child) and fails with ``exceeded memory_mb=N: peak M MB``;
* a child that exits while it runs an attempt (a segfault, ``os._exit``, the memory
  kill, a termination) fails only that attempt; the pool starts a replacement;
* each child leads its own process group, and every signal goes to the group (only
  while the child has not exited: after that its pid may be another process's), so
  what a task forked is terminated with it; the reader waits on the child's exit as
  well as on its pipe, which such a grandchild may hold open;
* a pool that cannot start children (``MAX_START_FAILURES`` in a row: a task module
  that fails to import in a child, no file descriptors left, ...) is *broken*: it says
  so once (``on_broken``) and the worker stops, for its supervisor to restart it.

The pool knows nothing of messages or reports: the worker gives each attempt an
:class:`AttemptListener` and decides what is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Protocol
from uuid import UUID

import psutil

from services.worker import child as child_code
from services.worker import process_tree
from services.worker.memory_use import attempt_peak, reset_peak, resident, tree_private_bytes
from services.worker.runner import Outcome, ToLoop, line_weight
from switchyard import _child as child_entry

log = logging.getLogger("switchyard.worker.pool")

WATCH_INTERVAL = 0.1  # seconds between memory samples of the busy children
# Seconds between walks of /proc for the processes busy children's tasks started (a
# walk reads every process's parent: ~4 ms here, in a thread, only while one is busy).
TREE_INTERVAL = 1.0
START_TIMEOUT = 60.0  # seconds a new child may take to import the task modules
# Longest an attempt waits for a free child (a replacement starting, a terminated child
# exiting): past it the attempt is handed back rather than wait on a pool gone wrong.
ACQUIRE_TIMEOUT = START_TIMEOUT
# Children in a row that could not be started or died before they were ready: the pool
# stops replacing them (a module that fails to import in a child would otherwise fork
# forever) and is broken.
MAX_START_FAILURES = 3
RESTART_DELAY = 0.1  # seconds before the next start after a failed one, doubled each time
MB = 2**20
# Ended attempts whose late log lines are still taken (a thread the task left running
# logs on while its child serves the next attempt): the most recent, pool-wide.
ENDED_REMEMBERED = 1024


class AttemptListener(Protocol):
    """What the worker hears of one attempt running in a child (on the event loop)."""

    def on_log(self, seq: int, level: str, message: str) -> None: ...

    def on_progress(self, done: float, total: float | None, message: str | None) -> None: ...

    def on_end(self, outcome: Outcome) -> None:
        """The attempt is over and its child is free or gone: its resources are free."""


@dataclass(eq=False)
class Child:
    process: BaseProcess
    inbox: Connection  # the parent's end of the child's inbox
    ready: bool = False
    gone: bool = False  # exited and reaped
    listener: AttemptListener | None = None
    job: tuple[UUID, int] | None = None
    memory_limit_mb: int = 0
    baseline_rss: int = 0
    peak_rss: int = 0  # above the baseline, this attempt
    tree_bytes: int = 0  # what the processes its task started hold alone, last walk
    runs: int = 0  # attempts started on it (a walk's figures count for the attempt it saw)
    ps: psutil.Process | None = None
    terminating: bool = False  # SIGTERM sent: only an outcome that is a success still counts
    leaving: bool = False  # it said it leaves after its attempt: no other attempt for it
    peak_reset: bool = False  # VmHWM was reset at this attempt's start: it is this attempt's
    kill_reason: str | None = None  # why the pool killed it (memory, an unreadable message)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid or 0


def _remember(recent: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    """Keep ``key`` in ``recent``, forgetting the oldest beyond ``ENDED_REMEMBERED``."""
    recent[key] = value
    while len(recent) > ENDED_REMEMBERED:
        recent.popitem(last=False)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the attempt's process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the attempt's process was killed by {name} (exit code {exitcode})"
    return f"the attempt's process exited with code {exitcode}"


class ProcessPool:
    def __init__(
        self,
        *,
        modules: list[str],
        size: int,
        kill_grace: float,
        demo_tasks: bool = False,
        on_broken: Callable[[str], None] | None = None,
        hold_back: Callable[[Callable[[], bool]], None] | None = None,
    ) -> None:
        """``on_broken(reason)`` is called once, on the event loop, when the pool gives up
        starting children. ``hold_back(give_up)`` is called by a child's reader thread
        before it hands on a log line, and may block it until ``give_up()``: the child's
        sends then wait on the full pipe, so a task that logs faster than the worker
        sends is held back as a thread's is. It gives up once the child is being
        stopped (its exit must be seen: the pool's close and a cancel wait for it)."""
        self.modules = modules
        self.on_broken = on_broken
        self.hold_back = hold_back
        self.demo_tasks = demo_tasks
        self.size = size
        self.kill_grace = kill_grace
        self.children: list[Child] = []
        self.closing = False
        self._context = multiprocessing.get_context("forkserver")
        # The forkserver imports these once; every child forks from it warm.
        # The child's entry is in ``switchyard``: it finds our server code even when the
        # user's directory (first on the path) has packages named like ours.
        self._context.set_forkserver_preload([child_entry.__name__, *modules])
        self._loop: asyncio.AbstractEventLoop | None = None
        # The reader threads' messages, once started (their log lines weighed as unsent).
        self.from_readers: ToLoop | None = None
        self._changed = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._starting = 0
        self._start_failures = 0
        self.broken: str | None = None  # why no child can be started
        self._ended: OrderedDict[tuple[UUID, int], AttemptListener] = OrderedDict()
        self._unheard: OrderedDict[tuple[UUID, int], None] = OrderedDict()  # said once

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start ``size`` children and wait until each has imported the task modules."""
        self._loop = asyncio.get_running_loop()
        self.from_readers = ToLoop(self._loop)
        for _ in range(self.size):
            self._spawn()
        self._watch = asyncio.create_task(self._watch_memory(), name="pool-watch")
        await self._wait(
            lambda: self._ready_count() >= self.size or self.broken is not None,
            START_TIMEOUT,
            "children ready",
        )
        if self.broken is not None:
            raise RuntimeError(self.broken)

    async def close(self) -> None:
        """Idle children leave; busy ones are terminated (SIGTERM, SIGKILL after the
        grace). Returns once every child has exited: none outlives the worker."""
        self.closing = True
        for c in self.children:
            if c.gone:
                continue
            if c.job is None:
                with contextlib.suppress(OSError):
                    c.inbox.send((child_code.EXIT,))
            else:
                self.terminate(c)
        with contextlib.suppress(TimeoutError):
            await self._wait(self._all_exited, self.kill_grace + 1, "children exit")
        for c in list(self.children):
            self._signal(c, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await self._wait(self._all_exited, 5.0, "children killed")
        if self._watch is not None:
            self._watch.cancel()

    def _spawn(self) -> None:
        """Start one child (counted in ``_starting`` until it is in ``children``)."""
        loop = self._loop
        assert loop is not None
        self._starting += 1
        # Starting a process talks to the forkserver (and starts it the first time):
        # not on the event loop.
        loop.run_in_executor(None, self._start_process).add_done_callback(self._spawned)

    def _spawned(self, started: asyncio.Future[Child]) -> None:
        self._starting -= 1
        exc = None if started.cancelled() else started.exception()
        if exc is not None or started.cancelled():
            # No file descriptor left (EMFILE), the forkserver gone: counted as a child
            # that did not start, retried after a pause, until the pool is broken.
            log.error("could not start a child process: %r", exc)
            self._start_failed(f"a child process could not be started: {exc!r}")
            return
        new = started.result()
        if new.gone:  # it died before this callback: its exit was counted already
            self._replace()
            return
        self.children.append(new)
        if self.closing:  # started while the pool closed: it leaves at once
            with contextlib.suppress(OSError):
                new.inbox.send((child_code.EXIT,))
        self._changed.set()

    def _replace(self) -> None:
        """Start children until the pool has ``size`` again (unless it closes or is broken)."""
        while (
            not self.closing
            and self.broken is None
            and len(self.children) + self._starting < self.size
        ):
            self._spawn()

    def _start_failed(self, what: str) -> None:
        """A child could not be started or died before it was ready."""
        self._start_failures += 1
        self._changed.set()
        if self._start_failures >= MAX_START_FAILURES:
            self._break(
                f"{self._start_failures} child processes in a row could not start (last: "
                f"{what}); see the worker's log"
            )
            return
        loop = self._loop
        assert loop is not None
        loop.call_later(RESTART_DELAY * 2 ** (self._start_failures - 1), self._replace)

    def _break(self, reason: str) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        log.error("process pool broken: %s; no more children are started", reason)
        self._changed.set()  # attempts waiting for a child are handed back
        if self.on_broken is not None:
            self.on_broken(reason)

    def _start_process(self) -> Child:
        parent_in, child_out = self._context.Pipe(duplex=False)  # child -> parent
        child_in, parent_out = self._context.Pipe(duplex=False)  # parent -> child
        process = self._context.Process(
            target=child_entry.main,
            args=(self.modules, self.demo_tasks, child_in, child_out),
            name="switchyard-attempt",
            daemon=True,
        )
        process.start()
        child_in.close()
        child_out.close()
        new = Child(process=process, inbox=parent_out)
        threading.Thread(
            target=self._read_child, args=(new, parent_in), name=f"child-{process.pid}", daemon=True
        ).start()
        return new

    def _read_child(self, c: Child, conn: Connection) -> None:
        """The child's messages to the loop, then its exit (this thread alone joins it).

        It waits on the child's exit (its sentinel) as well as on the pipe: a process
        the task forked holds the pipe open, so EOF may never come. A message that cannot
        be read (not unpicklable here, a corrupt stream) ends the child: it is killed and
        its attempt fails with the reason, rather than leave an attempt that never ends.
        """
        sentinel = c.process.sentinel
        while conn in wait([conn, sentinel]):  # what the child sent before it exited first
            try:
                item = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:
                c.kill_reason = f"its message to the worker could not be read: {exc!r}"
                log.error("child %d: %s; killing it", c.pid, c.kill_reason)
                self._signal(c, signal.SIGKILL)
                break
            weight = _weight(item)
            if weight and self.hold_back is not None:
                self.hold_back(lambda: self._stopping(c))
            self._to_loop(self._on_message, c, item, weight=weight)
        conn.close()
        c.process.join()
        # What the task forked and left behind dies with it. Safe after the exit: a
        # group id stays reserved while a member lives, and with none left there is
        # nothing to find (a new group under this id in this very moment would need
        # the pid counter to wrap around to it).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.pid, signal.SIGKILL)
        self._to_loop(self._on_exit, c, c.process.exitcode)

    def _stopping(self, c: Child) -> bool:
        return self.closing or c.terminating or c.kill_reason is not None

    def _to_loop(self, callback: Callable[..., None], *args: Any, weight: int = 0) -> None:
        if self.from_readers is not None:
            self.from_readers.post(callback, *args, weight=weight)

    # ------------------------------------------------------------ attempts

    async def acquire(self, timeout: float = ACQUIRE_TIMEOUT) -> Child:
        """An idle ready child (waits while replacements start, ``timeout`` at most:
        then TimeoutError; RuntimeError when the pool closes or is broken)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for c in self.children:
                        if (c.ready and c.job is None and not c.terminating and not c.gone
                                and not c.leaving):  # fmt: skip
                            return c
                    if self.closing:
                        raise RuntimeError("the process pool is closing")
                    if self.broken is not None:
                        raise RuntimeError(self.broken)
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no child process was free within {timeout:g} s") from None

    def run(
        self,
        c: Child,
        *,
        job_id: UUID,
        attempt: int,
        task_type: str,
        payload: dict[str, Any],
        memory_mb: int,
        listener: AttemptListener,
    ) -> None:
        c.job = (job_id, attempt)
        c.listener = listener
        c.memory_limit_mb = memory_mb
        c.kill_reason = None
        c.peak_rss = 0
        c.tree_bytes = 0
        c.runs += 1
        c.peak_reset = False
        try:
            c.baseline_rss, _ = resident(c.pid)
            c.peak_reset = reset_peak(c.pid)
            c.ps = psutil.Process(c.pid)
            c.ps.cpu_percent(interval=None)  # the first call starts the measurement
        except (OSError, psutil.Error):
            c.baseline_rss = 0
        # A payload of megabytes fills the pipe until the child has read it: not on the
        # event loop. A child that died meanwhile is reported by its reader thread.
        loop = self._loop
        assert loop is not None
        item = (child_code.RUN, job_id, attempt, task_type, payload)
        loop.run_in_executor(None, self._send, c, item)

    @staticmethod
    def _send(c: Child, item: tuple[Any, ...]) -> None:
        try:
            c.inbox.send(item)
        except OSError as exc:
            log.warning("could not send to child %d (it exits): %r", c.pid, exc)

    def terminate(self, c: Child) -> None:
        """SIGTERM now (the task's cancel flag is set and it is interrupted), SIGKILL
        if the child is still alive after the grace. The attempt ends when it exits."""
        if c.terminating or c.gone:
            return
        c.terminating = True
        self._signal(c, signal.SIGTERM)
        loop = self._loop
        assert loop is not None
        c.timers.append(loop.call_later(self.kill_grace, self._signal, c, signal.SIGKILL))

    def _signal(self, c: Child, sig: int) -> None:
        """Signal the child's process group (what its task forked too), only while the
        child has not exited: its pid may be another process's once it is reaped."""
        if not c.pid or self._exited(c):
            return
        if sig == signal.SIGKILL:
            # What left the group (the child adopted it) is under the child only while
            # the child lives: killed first, found by a walk of /proc, off the event
            # loop (milliseconds, more on a host of thousands of processes). SIGTERM
            # lets the child end them itself.
            threading.Thread(
                target=self._kill_tree, args=(c,), name=f"kill-{c.pid}", daemon=True
            ).start()
            return
        self._signal_group(c, sig)

    def _kill_tree(self, c: Child) -> None:
        if not self._exited(c):
            links = process_tree.children_by_parent()
            process_tree.signal_each(process_tree.descendants(c.pid, links), signal.SIGKILL)
        if not self._exited(c):
            self._signal_group(c, signal.SIGKILL)

    @staticmethod
    def _signal_group(c: Child, sig: int) -> None:
        try:
            os.killpg(c.pid, sig)
        except ProcessLookupError:  # still starting: not yet the leader of its group
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, sig)

    @staticmethod
    def _exited(c: Child) -> bool:
        # The sentinel is readable once the child has exited (it is not read here: the
        # reader thread's join reads the exit code from it).
        return c.gone or bool(wait([c.process.sentinel], 0))

    def _on_message(self, c: Child, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == child_code.READY:
            c.ready = True
            self._start_failures = 0
            self._changed.set()
            return
        if kind in (child_code.LOG, child_code.PROGRESS):
            self._news(c, kind, (item[1], item[2]), item[3:])
            return
        if kind == child_code.LEAVING:
            c.leaving = True
            return
        listener = c.listener
        if listener is None:
            return
        if kind == child_code.OUTCOME and c.job is not None:
            outcome = Outcome(**item[1])
            if c.terminating and not outcome.ok:
                return  # the interrupted attempt ends with its child's exit
            # A success stands even when a timeout or cancel came at the same moment:
            # the child sends "ok" only for an attempt that ended before SIGTERM.
            _remember(self._ended, c.job, listener)
            c.listener = None
            c.job = None
            c.ps = None
            self._changed.set()
            listener.on_end(outcome)

    def _news(self, c: Child, kind: str, key: tuple[UUID, int], fields: tuple[Any, ...]) -> None:
        """A log line or progress update, to the attempt it names: the one the child
        runs, or one that ended (a thread its task left running) while it is
        remembered; never the attempt that happens to run now."""
        listener = c.listener if c.job == key else self._ended.get(key)
        if listener is None:
            if key not in self._unheard:
                _remember(self._unheard, key, None)
                log.warning("child %d: job %s attempt %s ended long ago; its late log lines "
                            "and progress are dropped", c.pid, *key)  # fmt: skip
            return
        if kind == child_code.LOG:
            listener.on_log(*fields)
        else:
            listener.on_progress(*fields)

    def _on_exit(self, c: Child, exitcode: int | None) -> None:
        c.gone = True
        for timer in c.timers:
            timer.cancel()
        with contextlib.suppress(ValueError):
            self.children.remove(c)
        c.inbox.close()
        listener, c.listener, c.job = c.listener, None, None
        if listener is not None:
            error = c.kill_reason or describe_exit(exitcode)
            if not c.terminating and not c.kill_reason:
                log.warning("child %d died running an attempt: %s", c.pid, error)
            listener.on_end(Outcome(ok=False, error=error))
        elif not self.closing:
            log.warning("idle child %d exited: %s", c.pid, describe_exit(exitcode))
        self._changed.set()
        if not c.ready and not self.closing:
            self._start_failed(f"a child died before it was ready: {describe_exit(exitcode)}")
        else:
            self._replace()

    # ------------------------------------------------------------ measuring

    async def _watch_memory(self) -> None:
        loop = asyncio.get_running_loop()
        next_walk = 0.0
        measuring: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                busy = [c for c in self.children if c.job is not None and not c.gone]
                if busy and loop.time() >= next_walk and (measuring is None or measuring.done()):
                    # Beside the samples, not in their way: a walk may take a while.
                    next_walk = loop.time() + TREE_INTERVAL
                    measuring = asyncio.create_task(self._measure_trees(busy))
                for c in busy:
                    if c.job is not None and not c.gone and c.kill_reason is None:
                        self._check_memory(c)
        finally:
            if measuring is not None:
                measuring.cancel()

    async def _measure_trees(self, busy: list[Child]) -> None:
        """What the processes each busy child's task started hold, for its limit."""
        runs = {c: c.runs for c in busy}
        loop = asyncio.get_running_loop()
        try:
            held = await loop.run_in_executor(None, tree_private_bytes, [c.pid for c in busy])
        except (OSError, RuntimeError) as exc:  # no /proc; the executor shut down
            log.warning("cannot measure what process-isolated tasks started: %r", exc)
            return
        for c, seen in runs.items():
            if c.runs == seen:  # still the attempt the walk saw
                c.tree_bytes = held.get(c.pid, 0)

    def _check_memory(self, c: Child) -> None:
        try:
            rss, hwm = resident(c.pid)
        except (OSError, ValueError):
            return  # exiting: its reader thread reports it
        peak = attempt_peak(rss, hwm, peak_reset=c.peak_reset) + c.tree_bytes
        c.peak_rss = max(c.peak_rss, peak - c.baseline_rss)
        limit = c.memory_limit_mb * MB
        if c.peak_rss > limit:
            c.kill_reason = f"exceeded memory_mb={c.memory_limit_mb}: peak {c.peak_rss / MB:.0f} MB"
            log.warning("job %s attempt %s: %s; killing its process", *c.job or ("?", "?"),
                        c.kill_reason)  # fmt: skip
            self._signal(c, signal.SIGKILL)

    def usage(self) -> list[tuple[Child, float, float]]:
        """(child, cpu %, resident MB above its idle self) of each busy child."""
        out = []
        for c in self.children:
            if c.job is None or c.gone or c.ps is None:
                continue
            try:
                cpu = c.ps.cpu_percent(interval=None)
                rss, _ = resident(c.pid)
            except (OSError, ValueError, psutil.Error):
                continue
            out.append((c, cpu, max(0, rss + c.tree_bytes - c.baseline_rss) / MB))
        return out

    # ------------------------------------------------------------ helpers

    def _all_exited(self) -> bool:
        return not self.children and not self._starting

    def _ready_count(self) -> int:
        return sum(1 for c in self.children if c.ready and not c.gone)

    async def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


def _weight(item: tuple[Any, ...]) -> int:
    """What a child's message adds to the worker's unsent ones: a log line's weight."""
    if item[0] == child_code.LOG and isinstance(item[-1], str):
        return line_weight(item[-1])
    return 0
