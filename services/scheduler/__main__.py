"""``python -m services.scheduler``: run a scheduler (active, or standing by)."""

from __future__ import annotations

import logging
import sys

from services.scheduler.scheduler import LeadershipLost, Scheduler
from shared.service import run_service


def main() -> int:
    try:
        return run_service("scheduler", lambda settings, stop: Scheduler(settings).run(stop))
    except LeadershipLost as exc:
        # Exit rather than risk two active schedulers; a supervisor restarts us as a standby.
        logging.getLogger("switchyard.scheduler").error("%s; exiting", exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
