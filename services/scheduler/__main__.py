"""``python -m services.scheduler``: run a scheduler (active, or standing by)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from services.scheduler.scheduler import LeadershipLost, Scheduler
from shared.settings import get_settings


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"switchyard scheduler: bad configuration: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Scheduler(settings).run(stop)

    try:
        asyncio.run(serve())
    except LeadershipLost as exc:
        # Exit rather than risk two active schedulers; a supervisor restarts us as a standby.
        logging.getLogger("switchyard.scheduler").error("%s; exiting", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
