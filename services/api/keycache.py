"""API keys checked once, then remembered: a request does not pay a database round trip
to authenticate (a large share of a ``POST /jobs``: docs/performance-history.md), and a key the
database refused is refused again for a short while without asking it (random tokens
must not cost a lookup each).

Revocation stays immediate on every replica: revoking a key sends ``NOTIFY`` on
``KEYS_CHANNEL`` in the revoking transaction, and every API replica LISTENs on it and
forgets all remembered keys when it arrives. While the listening connection is down
(database outage, restart), no valid key is remembered: every request asks the
database, as it did before. Entries also expire after ``ttl`` seconds, a bound should a
notification ever be missed. Refused keys are remembered for ``refused_ttl`` seconds
(also while not listening: a key created meanwhile is accepted at the latest then).

Open WebSockets watch their key (:meth:`KeyCache.watch`): the listening connection
checks every watched key again when a notification arrives and every
``recheck_seconds``, and sets the watch's ``revoked`` event for a key that is no longer
valid, so its sockets close within seconds on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.auth import Actor
from shared.single_flight import SingleFlight

log = logging.getLogger(__name__)

KEYS_CHANNEL = "switchyard_api_keys"

VALID_KEYS = "SELECT key_hash FROM api_keys WHERE key_hash = ANY($1::text[]) AND revoked_at IS NULL"


@dataclass(eq=False)
class KeyWatch:
    """One open socket's interest in its key; ``revoked`` is set when the key is not valid."""

    digest: str
    revoked: asyncio.Event = field(default_factory=asyncio.Event)


class KeyCache:
    def __init__(
        self,
        dsn: str | None,
        *,
        ttl: float = 10.0,
        max_entries: int = 10_000,
        refused_ttl: float = 5.0,
        recheck_seconds: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.ttl = ttl
        self.max_entries = max_entries
        self.refused_ttl = refused_ttl
        self.recheck_seconds = recheck_seconds
        self._entries: dict[str, tuple[float, Actor]] = {}
        self.lookups: SingleFlight[Actor | None] = SingleFlight()  # by digest, generation
        # digest -> when to forget it; oldest first, so the bound drops the oldest
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._watches: dict[str, set[KeyWatch]] = {}
        self._recheck = asyncio.Event()
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

    # ------------------------------------------------------------ refused keys

    def is_refused(self, digest: str) -> bool:
        """True when the database refused this key less than ``refused_ttl`` ago."""
        until = self._refused.get(digest)
        if until is None:
            return False
        if until < time.monotonic():
            del self._refused[digest]
            return False
        return True

    def remember_refused(self, digest: str, generation: int) -> None:
        """Remember that ``digest`` was refused, unless keys changed since ``generation``
        was read (before the lookup that refused it)."""
        if self.refused_ttl <= 0 or generation != self.generation:
            return
        self._refused.pop(digest, None)
        self._refused[digest] = time.monotonic() + self.refused_ttl
        while len(self._refused) > self.max_entries:
            self._refused.popitem(last=False)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._refused.clear()
        self._recheck.set()  # the watched keys too: one of them may be the revoked one

    # ------------------------------------------------------------ watched keys

    def watch(self, digest: str) -> KeyWatch:
        watch = KeyWatch(digest)
        self._watches.setdefault(digest, set()).add(watch)
        return watch

    def unwatch(self, watch: KeyWatch) -> None:
        watchers = self._watches.get(watch.digest)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watches[watch.digest]

    async def _recheck_watched(self, conn: asyncpg.Connection) -> None:
        digests = list(self._watches)
        if not digests:
            await conn.fetchval("SELECT 1", timeout=2.0)  # still a probe of the connection
            return
        valid = {r["key_hash"] for r in await conn.fetch(VALID_KEYS, digests, timeout=5.0)}
        for digest in digests:
            if digest not in valid:
                for watch in self._watches.get(digest, ()):
                    watch.revoked.set()

    # ------------------------------------------------------------ listening

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
                    # Woken by a notification, else every recheck_seconds; the query
                    # also probes the connection (a silent network cut does not
                    # terminate it).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.recheck_seconds):
                            await self._recheck.wait()
                    self._recheck.clear()
                    if not lost.is_set():
                        await self._recheck_watched(conn)
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
