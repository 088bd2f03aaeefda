"""Selecting jobs by the list's filters: the page of ``GET /jobs`` and the jobs a
``POST /jobs/bulk`` acts on read the same conditions, in the same order.

A selection is read in parts, each a query of its own, merged: one per status it
names, or else three, the waiting jobs, the running ones and the finished ones, as
the list's partial indexes split them (migration 0010). Within a part the planner can
walk whichever index bounds the page best: the status range
(``jobs_status_created_idx``, in list order), the part's half of the ``created_at``,
type, priority or owner index (a submitter's bulk action reads its own jobs only,
migration 0012), or the name prefix index (``jobs_name_prefix_idx``,
``text_pattern_ops``: the prefix as a range in byte order, which a prepared
statement's generic plan can use too; ``LIKE $1`` could not). The statuses are
written into each query as literals (each is one of ``JobStatus``): a parameter would
hide from a generic plan which partial index may serve it. Every other value is a
parameter, and only the conditions given appear, so each combination plans on its
own. Each part reads at most ``limit`` rows; the merge keeps ``limit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import fetch
from shared.jobs.reads import decode_cursor, encode_cursor
from shared.jobs.sql import status_list
from shared.schemas import Priority
from shared.states import TERMINAL, WAITING, JobStatus

# The largest code point: every string that starts with a prefix sorts (byte-wise, as
# UTF-8) before the prefix followed by it, and after the prefix alone.
_LAST_CHAR = chr(0x10FFFF)


@dataclass(frozen=True)
class JobSelection:
    """The list's filters; every one given must hold."""

    status: list[JobStatus] | None = None
    type: str | None = None
    priority: Priority | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    name_prefix: str | None = None
    ids: list[UUID] | None = None
    created_by: str | None = None

    def is_empty(self) -> bool:
        return not any(
            (self.status, self.type, self.priority, self.created_after, self.created_before,
             self.name_prefix, self.ids)
        )  # fmt: skip


def _conditions(selection: JobSelection, args: list[object]) -> list[str]:
    """The conditions of ``selection`` but its statuses, its values appended to ``args``
    (``$n`` numbered after what ``args`` already holds)."""

    def param(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if selection.type:
        where.append(f"type = {param(selection.type)}")
    if selection.priority:
        where.append(f"priority = {param(selection.priority.rank)}::smallint")
    if selection.created_after:
        where.append(f"created_at >= {param(selection.created_after)}")
    if selection.created_before:
        where.append(f"created_at < {param(selection.created_before)}")
    if selection.name_prefix:
        low = param(selection.name_prefix)
        high = param(selection.name_prefix + _LAST_CHAR)
        # The range is what the index serves; starts_with keeps the answer exact.
        where.append(f"name ~>=~ {low} AND name ~<~ {high} AND starts_with(name, {low})")
    if selection.ids:
        where.append(f"id = ANY({param(selection.ids)}::uuid[])")
    if selection.created_by:
        where.append(f"created_by = {param(selection.created_by)}")
    return where


def _status_conditions(selection: JobSelection) -> list[str]:
    """One condition per query: each status named (once), or else the waiting half, the
    running jobs and the finished half, which the list's partial indexes split the
    same way. Literals, not parameters: each value is one of ``JobStatus``."""
    if selection.status:
        return [f"status = '{JobStatus(s).value}'" for s in dict.fromkeys(selection.status)]
    return [
        f"status IN {status_list(WAITING)}",
        f"status = '{JobStatus.RUNNING.value}'",
        f"status IN {status_list(TERMINAL)}",
    ]


def _in_list_order(
    selection: JobSelection,
    *,
    columns: str,
    limit: int,
    newest_first: bool,
    past: tuple[datetime, UUID] | None = None,
) -> tuple[str, list[object]]:
    """The first ``limit`` selected jobs' ``columns`` (``created_at`` and ``id`` among
    them) in list order, those past the keys ``past`` only; the statement and its
    arguments."""
    direction = " DESC" if newest_first else ""
    # The limit is a literal too: with ``LIMIT $1`` a generic plan is costed as if a
    # tenth of each range were read, so at millions of jobs PostgreSQL plans every
    # execution anew (0.45 ms for three parts) instead of reusing its plan.
    rows = int(limit)
    args: list[object] = []
    shared = _conditions(selection, args)
    if past is not None:
        args.extend(past)
        n = len(args)
        beyond = "<" if newest_first else ">"
        shared.append(f"(created_at, id) {beyond} (${n - 1}::timestamptz, ${n}::uuid)")
    arms = [
        f"SELECT {columns} FROM jobs WHERE {' AND '.join([status, *shared])}"
        f" ORDER BY created_at{direction}, id{direction} LIMIT {rows}"
        for status in _status_conditions(selection)
    ]
    if len(arms) == 1:
        return arms[0], args
    merged = " UNION ALL ".join(f"({arm})" for arm in arms)
    return (
        f"SELECT * FROM ({merged}) arms ORDER BY created_at{direction}, id{direction} LIMIT {rows}",
        args,
    )


def page_query(
    selection: JobSelection, *, limit: int, cursor: str | None
) -> tuple[str, list[object]]:
    """A keyset page newest first (``limit`` rows), and its arguments."""
    past = decode_cursor(cursor) if cursor else None
    return _in_list_order(selection, columns="*", limit=limit, newest_first=True, past=past)


async def list_page(
    session: AsyncSession, *, selection: JobSelection, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Newest first, keyset-paginated on (created_at, id): each page is an index scan."""
    statement, args = page_query(selection, limit=limit + 1, cursor=cursor)
    jobs = [SimpleNamespace(**dict(r)) for r in await fetch(session, statement, *args)]
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


def ids_query(selection: JobSelection, *, limit: int) -> tuple[str, list[object]]:
    """The first ``limit`` selected jobs' ids oldest first, and its arguments."""
    return _in_list_order(selection, columns="id, created_at", limit=limit, newest_first=False)


async def select_ids(session: AsyncSession, *, selection: JobSelection, limit: int) -> list[UUID]:
    """Up to ``limit`` ids of the selected jobs, oldest first."""
    statement, args = ids_query(selection, limit=limit)
    return [r["id"] for r in await fetch(session, statement, *args)]
