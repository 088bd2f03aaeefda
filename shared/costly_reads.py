"""A read made again for every answer while it is cheap, and reused once it is not.

Some of what a dashboard asks for every 2 s grows with the history or the throughput
(``GET /stats``: the finished jobs counted, the last 15 minutes' throughput and run
times). A read is made for every answer, so it is exact as of the answer, until two
readings in a row took ``every_call_below`` seconds or more. From then on the last
reading is reused for ``reuse_factor`` times as long as it took (at most
``max_reuse_seconds``: the *window*) and made again in the background once it is older,
one at a time. Each API replica then spends on it about 1/``reuse_factor`` of the
database's time while a reading takes less than ``max_reuse_seconds / reuse_factor``,
and one reading every ``max_reuse_seconds`` past that, however many dashboards ask. A
reading older than twice its window (nobody asked meanwhile, or the readings since
failed) is not served: the answer waits for a new one. A cheap reading goes back to
reading for every answer.
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
COSTLY_IN_A_ROW = 2  # one slow reading on a busy moment does not change the mode
RETRY_AFTER_SECONDS = 10.0  # between background readings that fail


@dataclass(frozen=True)
class Reading(Generic[T]):
    value: T
    at: datetime  # when the read began
    took: float  # seconds
    began: float  # time.monotonic() when it began


class CostlyRead(Generic[T]):
    """``read`` (a statement or a few on one connection), made as often as that is
    cheap. ``read`` is given a session or a connection: an asyncpg connection's own
    timeout (30 s) bounds a background reading."""

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
        self._costly_in_a_row = 0
        self._reading: asyncio.Task[Reading[T]] | None = None
        self._failed_at = float("-inf")
        self._closed = False

    async def get(self, db: Db, pool: asyncpg.Pool | None) -> Reading[T]:
        """Made now on ``db`` while readings are cheap; else the last reading while it is
        fresh enough, a new one being made with a connection of ``pool`` meanwhile
        (without ``pool``, always made now)."""
        last = self._last
        if pool is None or self._closed or last is None or not self.costly:
            return self._keep(await self._timed(db))
        age = time.monotonic() - last.began
        window = min(self._max_reuse_seconds, self._reuse_factor * last.took)
        if age > 2 * window:  # too old to serve: wait for a new one (its error, if any)
            return await asyncio.shield(self._read_apart(pool))
        if age > window and time.monotonic() - self._failed_at > RETRY_AFTER_SECONDS:
            self._read_apart(pool)
        return last

    @property
    def costly(self) -> bool:
        return self._costly_in_a_row >= COSTLY_IN_A_ROW

    async def _timed(self, db: Db) -> Reading[T]:
        at, began = datetime.now(UTC), time.monotonic()
        value = await self._read(db)
        return Reading(value, at, time.monotonic() - began, began)

    def _keep(self, reading: Reading[T]) -> Reading[T]:
        if self._last is None or reading.began >= self._last.began:
            self._last = reading
            costly = reading.took >= self._every_call_below
            self._costly_in_a_row = self._costly_in_a_row + 1 if costly else 0
        return reading

    def _read_apart(self, pool: asyncpg.Pool) -> asyncio.Task[Reading[T]]:
        """The reading under way, or a new one (one at a time)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._in_background(pool), name=self._what)
            self._reading.add_done_callback(self._settled)
        return self._reading

    async def _in_background(self, pool: asyncpg.Pool) -> Reading[T]:
        async with pool.acquire() as conn:
            return self._keep(await self._timed(conn))

    def _settled(self, task: asyncio.Task[Reading[T]]) -> None:
        """A failed reading is logged here (whether or not an answer waited for it);
        the last one stays in use, and the next is tried after RETRY_AFTER_SECONDS."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self._failed_at = time.monotonic()
        log.warning("reading %s failed (tried again in %g s at the earliest): %r",
                    self._what, RETRY_AFTER_SECONDS, exc)  # fmt: skip

    async def close(self) -> None:
        """Stop a reading under way; from now on every reading is made by its caller."""
        self._closed = True
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
