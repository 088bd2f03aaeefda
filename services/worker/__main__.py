"""``python -m services.worker [--tasks MODULE[,MODULE]] [--threads N] [--cpu-units N]
[--memory-mb N] [--worker-id ID] [--no-demo-tasks] [--isolation task|thread|process]``

Defaults come from SWITCHYARD_WORKER_* variables, then from the container's cgroup
limits (CPU quota, memory limit), then from psutil (all cores, all memory); two threads
per core offered, at least four.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable

from services.worker.capacity import ContainerCapacity, container_capacity
from services.worker.runner import worker_registry
from services.worker.worker import WORKER_ISOLATIONS, Worker
from shared.messages import WORKER_ID_PATTERN
from shared.service import StartupError, run_service, service_parser, tune_gc
from shared.settings import (
    WORKER_MAX_CPU_UNITS,
    WORKER_MAX_MEMORY_MB,
    WORKER_MAX_THREADS,
    Settings,
)
from shared.tasks import TaskRegistry


def default_worker_id() -> str:
    """``<host>-<pid>``: distinct for every worker process (a fixed id must be unique)."""
    host = "".join(
        c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in os.uname().nodename
    )  # WORKER_ID_PATTERN: ASCII only (isalnum() alone takes é and ½)
    return f"{host[:60]}-{os.getpid()}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = service_parser(
        "worker",
        "runs the @task functions of the given modules in threads, as the scheduler "
        "dispatches them. " + " ".join(__doc__.split("\n\n")[1].split()),
    )
    p.add_argument(
        "--tasks",
        metavar="MODULE[,MODULE]",
        help="comma-separated modules of @task functions to load",
    )
    p.add_argument(
        "--threads",
        metavar="N",
        type=_within(int, 1, WORKER_MAX_THREADS),
        help="thread slots (jobs at once)",
    )
    p.add_argument(
        "--cpu-units",
        metavar="N",
        type=_within(float, 0, WORKER_MAX_CPU_UNITS, above=True),
        help="cpu units offered to jobs",
    )
    p.add_argument(
        "--memory-mb",
        metavar="N",
        type=_within(int, 1, WORKER_MAX_MEMORY_MB),
        help="memory (MB) offered to jobs",
    )
    p.add_argument("--worker-id", metavar="ID", help="stable id (a restarted worker may reuse it)")
    p.add_argument("--no-demo-tasks", action="store_true", help="do not load the demo.* tasks")
    p.add_argument(
        "--isolation",
        choices=WORKER_ISOLATIONS,
        help="where attempts run: as each @task says (task, the default), on threads, or "
        "each in a warm child process with hard timeouts and memory limits (process)",
    )
    return p.parse_args(argv)


def _within(
    kind: type[int] | type[float], low: float, high: float, *, above: bool = False
) -> Callable[[str], float]:
    """An argparse type: a ``kind`` from ``low`` (exclusive when ``above``) to ``high``."""
    lowest = f"more than {_number(low)}" if above else f"at least {_number(low)}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if above else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: {lowest}, at most {_number(high)}"
            )
        return value

    return parse


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else str(value)


def task_modules(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The modules of the worker's tasks (a process-pool child imports the same ones)."""
    return [m.strip() for m in (args.tasks or settings.worker_tasks).split(",") if m.strip()]


def demo_tasks_wanted(args: argparse.Namespace, settings: Settings) -> bool:
    return settings.demo_tasks and not args.no_demo_tasks


def load_registry(args: argparse.Namespace, settings: Settings) -> TaskRegistry:
    modules = task_modules(args, settings)
    try:
        registry = worker_registry(modules, demo=demo_tasks_wanted(args, settings))
    except Exception as exc:  # an import error in user code: say which module, stop
        raise StartupError(f"cannot load task modules {modules}: {exc!r}") from exc
    if not len(registry):
        raise StartupError("no tasks to run (give --tasks or keep the demo tasks)")
    return registry


def default_capacity(args: argparse.Namespace, settings: Settings) -> ContainerCapacity:
    """What the worker offers: a flag, else its SWITCHYARD_WORKER_* variable, else the
    container's cgroup limits, else the machine (psutil); logged with its source."""
    found = container_capacity()
    cpu, cpu_source = found.cpu_units, found.cpu_source
    if args.cpu_units:
        cpu, cpu_source = args.cpu_units, "--cpu-units"
    elif settings.worker_cpu_units:
        cpu, cpu_source = settings.worker_cpu_units, "SWITCHYARD_WORKER_CPU_UNITS"
    memory, memory_source = found.memory_mb, found.memory_source
    if args.memory_mb:
        memory, memory_source = args.memory_mb, "--memory-mb"
    elif settings.worker_memory_mb:
        memory, memory_source = settings.worker_memory_mb, "SWITCHYARD_WORKER_MEMORY_MB"
    offered = ContainerCapacity(cpu, memory, cpu_source, memory_source)
    logging.getLogger("switchyard.worker").info("offering %s", offered.describe())
    return offered


def build_worker(args: argparse.Namespace, settings: Settings) -> Worker:
    """The worker the flags and settings describe (StartupError when it cannot run)."""
    registry = load_registry(args, settings)
    if args.worker_id is not None and not re.fullmatch(WORKER_ID_PATTERN, args.worker_id):
        raise StartupError(
            f"--worker-id {args.worker_id!r}: use 1-100 letters, digits, '-' or '_' (no dots)"
        )
    offered = default_capacity(args, settings)
    return Worker(
        settings=settings,
        registry=registry,
        worker_id=args.worker_id or settings.worker_id or default_worker_id(),
        threads=args.threads or settings.worker_threads or max(4, 2 * math.ceil(offered.cpu_units)),
        cpu_units=offered.cpu_units,
        memory_mb=offered.memory_mb,
        isolation=args.isolation or settings.worker_isolation,
        task_modules=task_modules(args, settings),
        demo_tasks=demo_tasks_wanted(args, settings),
    )


def threads_left_by_tasks(pool: set[threading.Thread], *, grace: float = 2.0) -> list[str]:
    """Threads a task started and left running (not daemons), given ``grace`` seconds to
    end: Python would wait for them at exit, and the worker would never exit after its
    drain. The worker's own task threads (``pool``) are counted apart."""
    left = [t for t in threading.enumerate() if t is not threading.main_thread()
            and t.is_alive() and not t.daemon and t not in pool]  # fmt: skip
    deadline = time.monotonic() + grace
    for thread in left:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in left if t.is_alive()]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    worker: Worker | None = None

    def prepare(settings: Settings) -> None:
        # Before the event loop exists: a task module may run asyncio when imported.
        nonlocal worker
        worker = build_worker(args, settings)

    async def serve(settings: Settings, stop: asyncio.Event) -> int:
        assert worker is not None
        # After the task modules were imported (by ``prepare``): their objects are
        # frozen with ours, and thresholds they set are theirs to keep.
        tune_gc(keep_user_thresholds=True)
        try:
            await worker.run(stop)  # the first signal drains it
        except StartupError as exc:  # the process pool could not start its children
            print(f"switchyard worker: {exc}", file=sys.stderr)
            return 2
        return 1 if worker.crashed else 0

    code = run_service("worker", serve, prepare=prepare, gc_tuning=False)  # tuned in serve
    stuck = worker.threads_still_running() if worker is not None else 0
    left = threads_left_by_tasks(worker.pool_threads() if worker is not None else set())
    if stuck or left:
        # Threads that ignore cancellation cannot be killed; do not hang on exit for them.
        logging.getLogger("switchyard.worker").warning(
            "exiting with %d task thread(s) still running, and %d thread(s) a task "
            "started: %s", stuck, len(left), ", ".join(left[:10]) or "none",
        )  # fmt: skip
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
