"""``python -m services.scheduler``: run a scheduler (active, or standing by)."""

from __future__ import annotations

import sys

from services.scheduler.cycle import Scheduler
from shared.service import run_service, service_parser


def main(argv: list[str]) -> int:
    service_parser(
        "scheduler",
        "places ready jobs on workers, fires schedules, retries and times out attempts. "
        "Run several: one holds the lock and is active, the others stand by.",
    ).parse_args(argv)
    # Losing the lock (its database connection) makes it stand by again, not exit.
    return run_service("scheduler", lambda settings, stop: Scheduler(settings).run(stop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
