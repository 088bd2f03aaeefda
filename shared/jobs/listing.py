"""Selecting jobs by the list's filters: the page of ``GET /jobs`` and the jobs a
``POST /jobs/bulk`` acts on read the same conditions, in the same order.

The keys the list orders by and filters on most (``created_at``, ``id``, ``type``,
``priority``) live in ``job_list_keys`` as well as in ``jobs``: one row per job, never
updated (migration 0010), so the status changes of ``jobs`` do not write their indexes.
A selection is read from whichever table has the index that bounds it (``_source``):
``jobs`` for a status (``jobs_status_created_idx``, a range per status, merged), a name
prefix (``jobs_name_prefix_idx``, a range in byte order, ``text_pattern_ops``, which a
prepared statement's generic plan can use too; ``LIKE $1`` could not) or ids; otherwise
``job_list_keys`` (its primary key, or its type or priority index) joined to ``jobs``.
Either way a page is a short range scan in list order; only the conditions given
appear, so each combination plans on its own.
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
from shared.schemas import Priority
from shared.states import JobStatus

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


@dataclass(frozen=True)
class _Source:
    """Where a selection is read from, and the table (alias) of its keys."""

    tables: str
    keys: str


# Joined on ``id`` alone: on ``(created_at, id)`` the planner would multiply the two
# equalities' selectivities, expect about one row, and sort the whole join.
_FROM_KEYS = _Source("job_list_keys k JOIN jobs j ON j.id = k.id", keys="k")
_FROM_JOBS = _Source("jobs j", keys="j")


def _source(selection: JobSelection) -> _Source:
    """``jobs`` alone where one of its indexes bounds the selection: a status (each
    one's range of ``jobs_status_created_idx`` is in list order), a name prefix or ids
    (few rows, sorted). Otherwise the list's keys, in list order by their primary key
    or by the type or priority index, each row joined to its job by its primary key."""
    if selection.status or selection.name_prefix or selection.ids:
        return _FROM_JOBS
    return _FROM_KEYS


def _conditions(selection: JobSelection, args: list[object], keys: str) -> list[str]:
    """The conditions of ``selection`` but its statuses, on ``jobs j`` and the keys'
    table ``keys``, its values appended to ``args`` (``$n`` numbered after what
    ``args`` already holds)."""

    def param(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if selection.type:
        where.append(f"{keys}.type = {param(selection.type)}")
    if selection.priority:
        where.append(f"{keys}.priority = {param(selection.priority.rank)}::smallint")
    if selection.created_after:
        where.append(f"{keys}.created_at >= {param(selection.created_after)}")
    if selection.created_before:
        where.append(f"{keys}.created_at < {param(selection.created_before)}")
    if selection.name_prefix:
        low = param(selection.name_prefix)
        high = param(selection.name_prefix + _LAST_CHAR)
        # The range is what the index serves; starts_with keeps the answer exact.
        where.append(f"j.name ~>=~ {low} AND j.name ~<~ {high} AND starts_with(j.name, {low})")
    if selection.ids:
        where.append(f"j.id = ANY({param(selection.ids)}::uuid[])")
    if selection.created_by:
        where.append(f"j.created_by = {param(selection.created_by)}")
    return where


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
    arguments. Several statuses are a query each, merged: each reads its own ordered
    range of the status index, at most ``limit`` rows of it."""
    source = _source(selection)
    k = source.keys
    direction = " DESC" if newest_first else ""
    args: list[object] = [limit]
    shared = _conditions(selection, args, k)
    if past is not None:
        args.extend(past)
        n = len(args)
        beyond = "<" if newest_first else ">"
        shared.append(f"({k}.created_at, {k}.id) {beyond} (${n - 1}::timestamptz, ${n}::uuid)")
    arms = []
    arm_statuses: list[JobStatus | None] = [*dict.fromkeys(selection.status or [])] or [None]
    for status in arm_statuses:  # each status once, in order
        where = list(shared)
        if status is not None:
            args.append(status.value)
            where.append(f"j.status = ${len(args)}")
        arms.append(
            f"SELECT {columns} FROM {source.tables} "
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + f"ORDER BY {k}.created_at{direction}, {k}.id{direction} LIMIT $1"
        )
    if len(arms) == 1:
        return arms[0], args
    merged = " UNION ALL ".join(f"({arm})" for arm in arms)
    order = f"ORDER BY created_at{direction}, id{direction}"
    return f"SELECT * FROM ({merged}) arms {order} LIMIT $1", args


def page_query(
    selection: JobSelection, *, limit: int, cursor: str | None
) -> tuple[str, list[object]]:
    """A keyset page newest first (``limit`` rows), and its arguments."""
    past = decode_cursor(cursor) if cursor else None
    return _in_list_order(selection, columns="j.*", limit=limit, newest_first=True, past=past)


async def list_page(
    session: AsyncSession, *, selection: JobSelection, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Newest first, keyset-paginated on (created_at, id): each page is an index scan."""
    statement, args = page_query(selection, limit=limit + 1, cursor=cursor)
    jobs = [SimpleNamespace(**dict(r)) for r in await fetch(session, statement, *args)]
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


async def select_ids(session: AsyncSession, *, selection: JobSelection, limit: int) -> list[UUID]:
    """Up to ``limit`` ids of the selected jobs, oldest first."""
    statement, args = _in_list_order(
        selection, columns="j.id, j.created_at", limit=limit, newest_first=False
    )
    return [r["id"] for r in await fetch(session, statement, *args)]
