"""Which scheduler is active: a PostgreSQL advisory lock per namespace.

The instance that holds the lock leads; the others wait for it. The lock lives as long
as its connection, so losing that connection means another instance may be active now:
the leader checks it before each cycle and stops acting at once when it is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import asyncpg

from shared.errors import SwitchyardError
from shared.settings import Settings

log = logging.getLogger("switchyard.scheduler")

_CHECK_EVERY = 0.5  # seconds between two checks of the lock's connection


class LeadershipLost(SwitchyardError):
    """The advisory lock's connection is gone: another instance may be active now."""


def lock_key(namespace: str) -> int:
    """A stable signed 64-bit advisory lock key per namespace."""
    return int.from_bytes(
        hashlib.sha256(f"switchyard:{namespace}".encode()).digest()[:8], "big", signed=True
    )


class Leadership:
    """The advisory lock and the connection that holds it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._conn: asyncpg.Connection | None = None
        self._last_check = 0.0
        self.is_leader = False

    async def wait(self, stop: asyncio.Event) -> None:
        """Return once this instance holds the lock (or ``stop`` is set)."""
        key = lock_key(self._settings.namespace)
        announced = False
        while not stop.is_set():
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._settings.sync_database_url, timeout=5)
                if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    self.is_leader = True
                    log.info("active scheduler for namespace %r", self._settings.namespace)
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("cannot reach the database for the scheduler lock: %s", exc)
            if not announced:
                log.info(
                    "standing by: another scheduler is active for %r", self._settings.namespace
                )
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def check(self) -> None:
        """Raise ``LeadershipLost`` if the lock's connection is gone (at most every
        half second: a busy leader does not add a round trip to every cycle)."""
        now = time.monotonic()
        if now - self._last_check < _CHECK_EVERY:
            return
        self._last_check = now
        try:
            assert self._conn is not None
            await self._conn.fetchval("SELECT 1", timeout=5)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            TimeoutError,
            AssertionError,
        ) as exc:
            raise LeadershipLost(f"lost the scheduler lock's connection: {exc!r}") from exc

    def abandon(self) -> None:
        """Stop leading at once: drop the connection (and the lock with it) without
        waiting on a database that may not answer."""
        self.is_leader = False
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
