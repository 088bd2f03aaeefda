"""What every service's ``main`` shares: logging, settings, signals, one asyncio run."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from shared.errors import ConfigError, SwitchyardError
from shared.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (every service's loop is busy with
    small socket writes: uvloop makes each one cheaper; see docs/performance.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def tune_gc() -> None:
    """Cheaper cyclic garbage collection for a long-running service (call once started).

    What exists now (modules, settings, compiled validators and queries) is frozen out
    of every later collection, and the youngest generation is collected every 20,000
    allocations instead of 700. Requests and cycles allocate many short-lived objects
    that reference counting frees anyway; with the defaults a 2,000-job batch set off
    several full collections that walked every object of the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


class StartupError(SwitchyardError):
    """A service cannot start as configured (a flag, a task module that fails to
    import): ``run_service`` prints it and exits 2, as for an invalid setting."""


def run_service(
    name: str,
    serve: Callable[[Settings, asyncio.Event], Awaitable[int | None]],
    *,
    prepare: Callable[[Settings], None] | None = None,
    gc_tuning: bool = True,
) -> int:
    """Read the settings, call ``prepare(settings)`` if given (before the event loop
    exists), then run ``serve(settings, stop)``; SIGTERM/SIGINT set ``stop``, and
    ``serve`` drains and returns in its own time (a second signal changes nothing).

    Returns the exit code: 2 for a bad configuration (an invalid setting, or a
    StartupError from ``prepare``), else what ``serve`` returns (None: 0).
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"switchyard {name}: {exc}", file=sys.stderr)
        return 2
    try:
        if prepare is not None:
            prepare(settings)
    except StartupError as exc:
        print(f"switchyard {name}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if gc_tuning:
            tune_gc()
        return await serve(settings, stop)

    return run_async(main()) or 0
