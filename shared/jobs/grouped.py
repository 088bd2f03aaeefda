"""Single submits grouped: the jobs that concurrent requests submit one each go into
the database together.

A lone ``POST /jobs`` is one statement (its job and audit row, ``insert_one``). While
that statement is in flight, the submits that arrive wait for it and then go in as one
statement (``insert_several``): one round trip, one commit and one WAL flush for the
group, about a third of PostgreSQL's CPU per job in groups of four (docs/performance.md).
A submit that finds no statement in flight waits for nothing, so at a low rate this
changes nothing; the busier the API, the larger the groups and the cheaper each job.

Each request still answers only once its own row is committed. One bad row does not
fail its group: a group that fails for another reason than an outage goes again one
job at a time, so each request gets its own row or its own error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from shared.db import is_db_outage
from shared.jobs import transitions

log = logging.getLogger(__name__)

Waiting = tuple[dict[str, Any], Sequence[Any], "asyncio.Future[Any]"]


class GroupedInserts:
    """At most one insert statement in flight; what arrives meanwhile is the next group."""

    # Rows per statement: bounds one statement's time and its parameters' size.
    MAX_GROUP = 500

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._busy = False
        self._waiting: list[Waiting] = []
        self._drainer: asyncio.Task[None] | None = None

    async def insert(self, row: dict[str, Any], audit: Sequence[Any]) -> Any:
        """Insert one job (``row``: the values of ``sql.INSERT_COLUMNS``) and its audit
        row; the stored row, once committed."""
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting.append((row, audit, future))
            return await future
        self._busy = True
        try:
            return await transitions.insert_one(self._pool, row, audit)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """The statement in flight ended: the next group goes in a task of its own, so
        the request that ran this one answers now."""
        if self._waiting:
            self._drainer = asyncio.create_task(self._drain(), name="grouped-inserts")
        else:
            self._busy = False

    async def _drain(self) -> None:
        group: list[Waiting] = []
        try:
            while self._waiting:
                taken = self._waiting[: self.MAX_GROUP]
                del self._waiting[: len(taken)]
                # A request cancelled before its statement started submits nothing, as
                # it would not have alone.
                group = [waiting for waiting in taken if not waiting[2].done()]
                if group:
                    await self._insert_group(group)
                group = []
        finally:
            self._busy = False
            # Only when interrupted (the API stopping, or a bug): nobody waits forever.
            stranded = [future for *_, future in group + self._waiting if not future.done()]
            self._waiting.clear()
            if stranded:
                log.warning("%d submit(s) not inserted: their group was interrupted", len(stranded))
            for future in stranded:
                future.set_exception(RuntimeError("the insert was interrupted; job not submitted"))

    async def _insert_group(self, group: list[Waiting]) -> None:
        try:
            if len(group) == 1:
                stored = [await transitions.insert_one(self._pool, group[0][0], group[0][1])]
            else:
                stored = await transitions.insert_several(
                    self._pool, [row for row, _, _ in group], [audit for _, audit, _ in group]
                )
        except Exception as exc:
            if len(group) > 1 and not is_db_outage(exc):
                log.warning("a group of %d submits failed (%s); inserting them one by one",
                            len(group), exc)  # fmt: skip
                for one in group:
                    await self._insert_group([one])
                return
            for *_, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), row in zip(group, stored, strict=True):
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(row)

    async def close(self) -> None:
        """Stop the group in flight, if any; its requests get an error."""
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.cancel()
            await asyncio.wait([drainer])
