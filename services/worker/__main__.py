"""``python -m services.worker [--tasks MODULE[,MODULE]] [--threads N] [--cpu-units N]
[--memory-mb N] [--worker-id ID] [--no-demo-tasks]``

Defaults come from SWITCHYARD_WORKER_* variables, then from psutil (all cores, all
memory, two threads per core, at least four).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys

import psutil
from pydantic import ValidationError

from services.worker.worker import Worker, default_worker_id
from shared import demo_tasks
from shared.service import run_async
from shared.settings import get_settings
from shared.tasks import TaskRegistry, load_task_modules


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m services.worker", description=__doc__.split("\n\n")[1]
    )
    p.add_argument("--tasks", help="comma-separated modules of @task functions to load")
    p.add_argument("--threads", type=int, help="thread slots (jobs at once)")
    p.add_argument("--cpu-units", type=float, help="cpu units offered to jobs")
    p.add_argument("--memory-mb", type=int, help="memory (MB) offered to jobs")
    p.add_argument("--worker-id", help="stable id (a restarted worker may reuse it)")
    p.add_argument("--no-demo-tasks", action="store_true", help="do not load the demo.* tasks")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"switchyard worker: bad configuration: {exc}", file=sys.stderr)
        return 2
    registry = TaskRegistry()
    if settings.demo_tasks and not args.no_demo_tasks:
        registry.include(demo_tasks.registry)
    modules = [m.strip() for m in (args.tasks or settings.worker_tasks).split(",") if m.strip()]
    try:
        load_task_modules(modules, registry)
    except Exception as exc:  # an import error in user code: say which module, stop
        print(f"switchyard worker: cannot load task modules {modules}: {exc!r}", file=sys.stderr)
        return 2
    if not len(registry):
        print(
            "switchyard worker: no tasks to run (give --tasks or keep the demo tasks)",
            file=sys.stderr,
        )
        return 2
    if args.worker_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", args.worker_id):
        print(
            f"switchyard worker: --worker-id {args.worker_id!r}: use 1-100 letters, digits, "
            "'-' or '_' (no dots)",
            file=sys.stderr,
        )
        return 2
    cpus = psutil.cpu_count(logical=True) or 1
    worker = Worker(
        settings=settings,
        registry=registry,
        worker_id=args.worker_id or settings.worker_id or default_worker_id(),
        threads=args.threads or settings.worker_threads or max(4, 2 * cpus),
        cpu_units=args.cpu_units or settings.worker_cpu_units or float(cpus),
        memory_mb=args.memory_mb
        or settings.worker_memory_mb
        or psutil.virtual_memory().total // 2**20,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    run_async(serve())
    code = 1 if worker.crashed else 0
    stuck = worker.threads_still_running()
    if stuck:
        # Threads that ignore cancellation cannot be killed; do not hang on exit for them.
        logging.getLogger("switchyard.worker").warning(
            "exiting with %d task thread(s) still running", stuck
        )
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
