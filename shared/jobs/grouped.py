"""Single submits grouped: the jobs that concurrent requests submit one each go into
the database together.

A lone ``POST /jobs`` is one statement (its job and audit row, ``insert_one``). While
that statement is in flight, the submits that arrive wait for it and then go in as one
statement (``insert_several``): one round trip, one commit and one WAL flush for the
group, about a third of PostgreSQL's CPU per job in groups of four (docs/performance-history.md).
A submit that finds no statement in flight waits for nothing, so at a low rate this
changes nothing; the busier the API, the larger the groups and the cheaper each job.

Each request still answers only once its own row is committed. One bad row does not
fail its group: a group that fails for another reason than an outage goes again one
job at a time, so each request gets its own row or its own error. A group is bounded
in rows and in payload bytes.
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

    # Bounds on one statement (its time, its parameters' size): rows, and payload bytes
    # (one client's large payloads must not make a statement that holds up everyone;
    # 4 MiB is about what one batch request of small jobs carries).
    MAX_GROUP = 500
    MAX_GROUP_BYTES = 4 * 2**20

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
            self._drainer.add_done_callback(_log_crash)
        else:
            self._busy = False

    async def _drain(self) -> None:
        group: list[Waiting] = []
        try:
            while self._waiting:
                group = self._next_group()
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
                future.set_exception(ConnectionError("the API stopped before the job was stored"))

    def _next_group(self) -> list[Waiting]:
        """The first waiting submits, within the bounds on rows and payload bytes (one
        at least); a request cancelled while it waited submits nothing, as it would not
        have alone."""
        taken, size = 0, 0
        for row, _, _ in self._waiting[: self.MAX_GROUP]:
            size += len(row["payload"])
            if taken and size > self.MAX_GROUP_BYTES:
                break
            taken += 1
        group = self._waiting[:taken]
        del self._waiting[:taken]
        return [waiting for waiting in group if not waiting[2].done()]

    async def _insert_group(self, group: list[Waiting]) -> None:
        if len(group) == 1:
            await self._insert_one_by_one(group)
            return
        try:
            stored = await transitions.insert_several(
                self._pool, [row for row, _, _ in group], [audit for _, audit, _ in group]
            )
        except Exception as exc:
            if is_db_outage(exc):
                _fail(group, exc)
                return
            log.warning("a group of %d submits failed (%s); inserting them one by one",
                        len(group), exc)  # fmt: skip
            await self._insert_one_by_one(group)
            return
        for (row, _, future), job in zip(group, stored, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if job is None:  # committed without it: an answer, not a second try
                future.set_exception(transitions.not_stored(row["id"]))
            else:
                future.set_result(job)

    async def _insert_one_by_one(self, group: list[Waiting]) -> None:
        """Each submit as its own statement: each request gets its own row or error;
        once the database is unreachable, the rest get that error without trying."""
        for i, (row, audit, future) in enumerate(group):
            try:
                job = await transitions.insert_one(self._pool, row, audit)
            except Exception as exc:
                if is_db_outage(exc):
                    _fail(group[i:], exc)
                    return
                _fail([group[i]], exc)
                continue
            if not future.done():
                future.set_result(job)

    async def close(self, timeout: float = 10.0) -> None:
        """Let the group in flight finish (at most ``timeout``), then stop it; the
        requests still waiting get an error (503)."""
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            await asyncio.wait([drainer], timeout=timeout)
            drainer.cancel()
            await asyncio.wait([drainer])


def _fail(group: Sequence[Waiting], exc: BaseException) -> None:
    for *_, future in group:
        if not future.done():
            future.set_exception(exc)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the grouped inserts' task failed", exc_info=exc)
