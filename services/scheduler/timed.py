"""Work that time makes due: delayed and backoff jobs whose time has come, and cron
schedules whose next fire time has passed. Once per tick, not on every message, so a
busy cycle stays a few statements long."""

from __future__ import annotations

import logging
import time

from services.scheduler.database import Database
from shared.catalog import TaskCatalog
from shared.jobs import transitions
from shared.jobs.prepare import Limits
from shared.messages import JobStateChanged
from shared.schedules import fire_due_schedules
from shared.settings import Settings

log = logging.getLogger("switchyard.scheduler")


class TimedWork:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._catalog = TaskCatalog()
        self._limits = Limits.from_settings(settings)
        self._last_run = 0.0

    def take_turn(self) -> bool:
        """True once per tick (and the tick starts now)."""
        now = time.monotonic()
        if now - self._last_run < self._settings.scheduler_tick_seconds:
            return False
        self._last_run = now
        return True

    async def run(self) -> list[JobStateChanged]:
        """Promote due jobs and fire due schedules (committed); returns their events."""
        limit = self._settings.scheduler_batch_size
        async with self._db.session() as session:
            due = await transitions.promote_due(session, limit=limit)
            if len(due) >= limit:
                self._last_run = 0.0  # more are due: again next cycle, not next tick
            fired, new_jobs = await fire_due_schedules(
                session, catalog=self._catalog, limits=self._limits
            )
            await session.commit()
        if new_jobs:
            log.info("schedules submitted %d job(s)", len(new_jobs))
        return [*due, *fired]
