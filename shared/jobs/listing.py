"""Selecting jobs by the list's filters: the page of ``GET /jobs`` and the jobs a
``POST /jobs/bulk`` acts on read the same ``WHERE``.

Each filter given adds one condition that an index of migration 0008 (or 0001) serves:
``status``, ``type`` and ``priority`` lead a ``(…, created_at, id)`` index each, so a
filtered page is a short range scan newest first; ``name`` is a *prefix* match
(case-sensitive) written as a range over ``jobs_name_prefix_idx`` (``text_pattern_ops``,
byte order), which a prepared statement's generic plan can use too (``LIKE $1`` could
not). Only the conditions given appear, so each combination plans on its own.
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


def where_clause(selection: JobSelection, args: list[object]) -> list[str]:
    """The conditions of ``selection``, its values appended to ``args`` (``$n`` numbered
    after what ``args`` already holds)."""

    def param(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if selection.status:
        where.append(f"status = ANY({param([s.value for s in selection.status])}::text[])")
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


def page_query(
    selection: JobSelection, *, limit: int, cursor: str | None
) -> tuple[str, list[object]]:
    """A keyset page newest first (``limit`` rows), and its arguments."""
    args: list[object] = [limit]
    where = where_clause(selection, args)
    if cursor:
        created, job_id = decode_cursor(cursor)
        args.extend((created, job_id))
        n = len(args)
        where.append(f"(created_at, id) < (${n - 1}::timestamptz, ${n}::uuid)")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return f"SELECT * FROM jobs {clause}ORDER BY created_at DESC, id DESC LIMIT $1", args


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
    args: list[object] = [limit]
    where = where_clause(selection, args)
    statement = (
        f"SELECT id FROM jobs WHERE {' AND '.join(where) or 'true'} "
        "ORDER BY created_at, id LIMIT $1"
    )
    return [r["id"] for r in await fetch(session, statement, *args)]
