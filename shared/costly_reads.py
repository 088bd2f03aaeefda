"""A read made again for every answer while it is cheap, and reused once it is not.

Some of what a dashboard asks for every 2 s grows with the history or the throughput
(``GET /stats``: the finished jobs counted, the last 15 minutes' throughput and run
times). A reading that took less than ``every_call_below`` seconds is made again for
every answer, so it is exact as of the answer; a slower one is reused for
``reuse_factor`` times as long as it took (at most ``max_reuse_seconds``) and made again
in the background meanwhile, one at a time: each API replica then spends at most about
1/``reuse_factor`` of the database's time on it, however many dashboards ask.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg

from shared.db import Db

log = logging.getLogger(__name__)

T = TypeVar("T")

EVERY_CALL_BELOW = 0.05
REUSE_FACTOR = 50
MAX_REUSE_SECONDS = 60.0


@dataclass(frozen=True)
class Reading(Generic[T]):
    value: T
    at: datetime  # when the read began
    took: float  # seconds
    began: float  # time.monotonic() when it began


class CostlyRead(Generic[T]):
    """``read`` (a statement or a few on a connection), made as often as that is cheap."""

    def __init__(
        self,
        what: str,
        read: Callable[[Db], Awaitable[T]],
        *,
        every_call_below: float = EVERY_CALL_BELOW,
        reuse_factor: float = REUSE_FACTOR,
        max_reuse_seconds: float = MAX_REUSE_SECONDS,
    ) -> None:
        self._what = what
        self._read = read
        self._every_call_below = every_call_below
        self._reuse_factor = reuse_factor
        self._max_reuse_seconds = max_reuse_seconds
        self._last: Reading[T] | None = None
        self._reading: asyncio.Task[Reading[T]] | None = None

    async def get(self, db: Db, pool: asyncpg.Pool | None) -> Reading[T]:
        """Made now on ``db`` when it is cheap, else the last reading while it is fresh
        enough, a new one being made on ``pool`` meanwhile once it is not (without
        ``pool``, always made now)."""
        last = self._last
        if pool is None or (last is not None and last.took < self._every_call_below):
            return self._keep(await self._timed(db))
        if last is None:  # the first: every caller waits for the same reading
            return await asyncio.shield(self._read_apart(pool))
        age = time.monotonic() - last.began
        if age > min(self._max_reuse_seconds, self._reuse_factor * last.took):
            self._read_apart(pool)
        return last

    async def _timed(self, db: Db) -> Reading[T]:
        at, began = datetime.now(UTC), time.monotonic()
        value = await self._read(db)
        return Reading(value, at, time.monotonic() - began, began)

    def _keep(self, reading: Reading[T]) -> Reading[T]:
        if self._last is None or reading.began >= self._last.began:
            self._last = reading
        return reading

    def _read_apart(self, pool: asyncpg.Pool) -> asyncio.Task[Reading[T]]:
        """The reading under way, or a new one (one at a time)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._in_background(pool), name=self._what)
        return self._reading

    async def _in_background(self, pool: asyncpg.Pool) -> Reading[T]:
        try:
            return self._keep(await self._timed(pool))
        except Exception as exc:
            # The last reading stays in use; the next answer that finds it old tries again.
            log.warning("reading %s failed: %r", self._what, exc)
            raise

    async def close(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
