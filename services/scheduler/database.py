"""The scheduler's ways into PostgreSQL, open while ``Scheduler.run`` runs.

Two of them: ORM sessions for the multi-statement transactions (reports with progress
and heartbeats, losses, timed work, undo, monitoring), and a raw asyncpg pool for the
statements of the placement path (claim, dispatch, reports, waiting reasons,
retention), where a transaction's round trips would cost more than the statement. The
cycle's statements, one after another, run on a connection of the pool kept for them
(``cycle``), given back when the scheduler stands by; retention, the maintenance reads
and the ready queue's vacuum take theirs from the pool (four: the kept one, and room
for those three at once). The advisory lock has a connection of its own
(``leadership``), as has the vacuum of ``jobs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import KeptConnection, create_engine, create_pool, create_sessionmaker
from shared.settings import Settings


class Database:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._pool: asyncpg.Pool | None = None
        self._cycle: KeptConnection | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        engine = create_engine(self._settings, pool_size=4)
        self._sessionmaker = create_sessionmaker(engine)
        # Connects on first use (a standby, or a start during an outage, holds none).
        # Its statements have one good plan whatever the parameters: plan them once per
        # connection. The cycle keeps one connection; the retention sweep, the
        # maintenance reads and the ready queue's vacuum use others beside it.
        self._pool = await create_pool(self._settings, min_size=0, max_size=4, generic_plans=True)
        self._cycle = KeptConnection(self._pool)
        try:
            yield
        finally:
            await self._cycle.close()
            self._cycle = None
            await self._pool.close()
            self._pool = None
            await engine.dispose()

    def session(self) -> AsyncSession:
        assert self._sessionmaker is not None, "the scheduler's database is not open"
        return self._sessionmaker()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the scheduler's database is not open"
        return self._pool

    @property
    def cycle(self) -> KeptConnection:
        """Where the cycle's statements run (one at a time)."""
        assert self._cycle is not None, "the scheduler's database is not open"
        return self._cycle
