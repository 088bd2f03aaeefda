"""One attempt's progress on its way out of the task: at most one update per interval.

A task may report progress on every item of a loop, hundreds of thousands of times;
each update that goes on costs a message built and validated, a wake-up of the worker's
loop (or a write to a child's pipe), a publish and a row written, while a reader needs
a few a second. So the figures are thinned where the task reports them, in its own
thread (or child), before any of that is paid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PROGRESS_INTERVAL = 0.2  # seconds between progress updates of one attempt that go on

Figures = tuple[float, float | None, str | None]  # (done, total, message) as the task gave them


def is_final(done: object, total: object) -> bool:
    """done >= total: the attempt's work is all done (never held back). Whatever the
    task passed, this never raises into it: figures that do not compare are no final
    (the message's validation refuses them later, with a warning)."""
    try:
        return total is not None and bool(done >= total)  # type: ignore[operator]
    except Exception:
        return False


class ProgressThrottle:
    """The first update goes at once, a final one (done >= total) always, the others at
    most one per ``interval``; the latest of those in between is held, and goes with the
    next one due or, taken with ``take_held``, when the attempt ends. Safe to call from
    the task's thread and the worker's loop at once."""

    def __init__(
        self, interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sent: float | None = None
        self._held: Figures | None = None

    def offer(self, done: float, total: float | None, message: str | None) -> Figures | None:
        """The figures to send now, or None: held (they replace any held before)."""
        with self._lock:
            now = self._clock()
            due = (
                self._last_sent is None
                or now - self._last_sent >= self._interval
                or is_final(done, total)
            )
            if not due:
                self._held = (done, total, message)
                return None
            self._last_sent = now
            self._held = None
            return (done, total, message)

    def take_held(self) -> Figures | None:
        """What is held back (once): the attempt has ended, it goes before its end."""
        with self._lock:
            held, self._held = self._held, None
            return held
