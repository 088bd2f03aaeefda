"""A service's own loop, proven alive: the heartbeat file and the check that reads it.

``run_service`` keeps a small task on the service's event loop that touches
``health_file(service)`` every ``BEAT_SECONDS``. A loop that is blocked (a task that
never yields), deadlocked or gone stops touching it, so the file's age says more than
"the process exists". ``python -m shared.health <service> [--max-age SECONDS]`` exits 0
while the file is fresher than ``--max-age`` and 1 otherwise, with one line saying why:
compose and Kubernetes run it as the container's healthcheck / liveness probe.

The file lives in ``$SWITCHYARD_HEALTH_DIR`` (default: the temporary directory, /tmp
in the image): one service per container, so one file per service name is enough.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# How often the loop touches its file; the check's default limit allows several misses.
BEAT_SECONDS = 5.0
DEFAULT_MAX_AGE_SECONDS = 30.0
SERVICES = ("api", "scheduler", "worker", "logger")

log = logging.getLogger("switchyard.health")


def health_file(service: str) -> Path:
    directory = os.environ.get("SWITCHYARD_HEALTH_DIR") or tempfile.gettempdir()
    return Path(directory) / f"switchyard-{service}.alive"


async def beat(service: str, *, every: float = BEAT_SECONDS) -> None:
    """Touch ``health_file(service)`` every ``every`` seconds until cancelled. A file
    that cannot be written is logged once and then skipped quietly: the service goes on,
    and its healthcheck says it is unhealthy."""
    path = health_file(service)
    failing = False
    while True:
        try:
            path.touch()
            failing = False
        except OSError as exc:
            if not failing:
                log.warning("cannot touch health file %s (%s): healthchecks will fail", path, exc)
            failing = True
        await asyncio.sleep(every)


def check(service: str, max_age: float, *, now: float | None = None) -> tuple[bool, str]:
    """(healthy, why) for the heartbeat file of ``service``."""
    path = health_file(service)
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{service}: no heartbeat yet ({path} missing)"
    if age > max_age:
        return False, f"{service}: loop silent for {age:.1f} s (limit {max_age:g} s; {path})"
    return True, f"{service}: loop alive ({age:.1f} s ago)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.health",
        description="exit 0 when the service's event loop touched its heartbeat file "
        "within --max-age seconds, else 1",
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_SECONDS, metavar="S")
    args = parser.parse_args(argv)
    healthy, why = check(args.service, args.max_age)
    print(why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
