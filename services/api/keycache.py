"""API keys checked once, then remembered: a request does not pay a database round trip
to authenticate (a large share of a ``POST /jobs``: docs/performance.md).

Revocation stays immediate on every replica: revoking a key sends ``NOTIFY`` on
``KEYS_CHANNEL`` in the revoking transaction, and every API replica LISTENs on it and
forgets all remembered keys when it arrives. While the listening connection is down
(database outage, restart), nothing is remembered: every request asks the database, as
it did before. Entries also expire after ``ttl`` seconds, a bound should a notification
ever be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from shared.auth import Actor

log = logging.getLogger(__name__)

KEYS_CHANNEL = "switchyard_api_keys"


class KeyCache:
    def __init__(self, dsn: str | None, *, ttl: float = 10.0, max_entries: int = 10_000) -> None:
        self.dsn = dsn
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Actor]] = {}
        # Bumped by every clear: a lookup that started before a revocation must not put
        # its (now stale) answer in the cache after the revocation cleared it.
        self.generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Remember keys only while revocations can reach us."""
        return self._listening and self.ttl > 0

    def get(self, digest: str) -> Actor | None:
        if not self.active:
            return None
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, actor: Actor, generation: int) -> None:
        """Remember ``actor``, unless the cache was cleared since ``generation`` was read
        (before the database lookup that produced ``actor``)."""
        if not self.active or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, actor)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def start(self) -> None:
        if self.dsn is not None and self.ttl > 0:
            self._task = asyncio.create_task(self._listen(), name="api-key-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        assert self.dsn is not None
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(KEYS_CHANNEL, self._on_notify)
                self.clear()  # what we knew before listening may be stale
                self._listening = True
                while not lost.is_set():
                    # A silent network cut does not terminate the connection: probe it.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=2.0)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=2.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop remembering, retry
                log.info("API key cache off until the database answers again (%s)", exc)
            finally:
                self._listening = False
                self.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(1.0)

    def _on_notify(self, *_args: Any) -> None:
        self.clear()
