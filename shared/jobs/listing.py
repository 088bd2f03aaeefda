"""Selecting jobs by the list's filters: the page of ``GET /jobs`` and the jobs a
``POST /jobs/bulk`` acts on read the same conditions, in the same order.

A selection is read in parts, each a query of its own, merged in list order (see
``_parts``): with a status, type, priority or owner to match, one per status and
priority it admits, each one range of an index equal in both (migration 0013):
``(status, priority, created_at, id)`` for all jobs; for one type
``(status, priority, type, created_at, id)``, in two halves, the unfinished jobs and
the finished ones; for one key's own jobs (a submitter's bulk action)
``(status, priority, created_by, created_at, id)`` in the list's two halves, waiting
and finished (migration 0010), its running jobs read through the first. So however
many jobs each filter matches alone, a page reads about the rows it returns. With
none of those, the halves of ``(created_at, id)`` and the running jobs per priority.
A name prefix is matched through its own index where the planner finds that cheaper
(``jobs_name_prefix_idx``, ``text_pattern_ops``: the prefix as a range in byte order,
which a prepared statement's generic plan can use too; ``LIKE $1`` could not).

Statuses and priorities are written into each query as literals (each is one of
``JobStatus`` or a priority rank): a parameter would hide from a generic plan which
partial index may serve it. Every other value is a parameter, and only the conditions
given appear, so each combination plans on its own. Each part reads at most ``limit``
rows; the merge keeps ``limit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import GENERIC_PLANS, session_connection
from shared.errors import SearchTooBroad
from shared.jobs.guards import status_list, unindexed_in
from shared.jobs.reads import decode_cursor, encode_cursor, within_budget
from shared.schemas import Priority
from shared.states import TERMINAL, WAITING, JobStatus

log = logging.getLogger(__name__)

# The largest code point: every string that starts with a prefix sorts (byte-wise, as
# UTF-8) before the prefix followed by it, and after the prefix alone.
_LAST_CHAR = chr(0x10FFFF)
_RUNNING = f"status = '{JobStatus.RUNNING.value}'"


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


def _leading(selection: JobSelection) -> str | None:
    """The column, after status and priority, of the index that serves the parts of
    ``selection``: its owner's (a submitter's bulk action), else its type's; ``None``:
    the status index and the ``created_at`` halves serve it."""
    if selection.ids:
        return None  # those rows are the whole work, read by primary key
    if selection.created_by:
        return "created_by"
    return "type" if selection.type else None


def _conditions(selection: JobSelection, args: list[object]) -> tuple[list[str], str | None]:
    """The conditions of ``selection`` but its statuses, priority, times and leading
    column, and the parameter holding the leading column's value (``None`` without
    one); its values appended to ``args`` (``$n`` numbered after what ``args`` already
    holds)."""

    def param(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    leading = _leading(selection)
    where: list[str] = []
    value = None
    for column, given in (("type", selection.type), ("created_by", selection.created_by)):
        if given and column == leading:
            value = param(given)
        elif given:
            where.append(f"{column} = {param(given)}")
    if selection.name_prefix:
        low = param(selection.name_prefix)
        high = param(selection.name_prefix + _LAST_CHAR)
        # The range is what the index serves; starts_with keeps the answer exact.
        where.append(f"name ~>=~ {low} AND name ~<~ {high} AND starts_with(name, {low})")
    if selection.ids:
        where.append(f"id = ANY({param(selection.ids)}::uuid[])")
    return where, value


def _parts(selection: JobSelection) -> list[str]:
    """The status and priority conditions of the parts, one per query (literals, not
    parameters: each value is one of ``JobStatus`` or a priority rank).

    With no status, type, priority or owner to match, six: the waiting half and the
    finished half in ``created_at`` order, and the running jobs once per priority.
    Otherwise one per pair of a status and a priority the selection admits (all of
    either when it names none): each pair is one range of the status index, and of
    the type and owner indexes, so no combination of status, type and priority walks
    jobs it does not select. With ids, one: those rows are the whole work, read by
    their key whatever the statistics say (``unindexed_in``)."""
    if selection.ids:
        where = unindexed_in("status", status_list(selection.status or JobStatus))
        if selection.priority:
            where += f" AND priority = {selection.priority.rank}"
        return [where]
    ranks = [selection.priority.rank] if selection.priority else [p.rank for p in Priority]
    if not (selection.status or selection.type or selection.priority or selection.created_by):
        return [
            f"status IN {status_list(WAITING)}",
            *(f"{_RUNNING} AND priority = {r}" for r in ranks),
            f"status IN {status_list(TERMINAL)}",
        ]
    statuses = dict.fromkeys(selection.status or JobStatus)
    return [f"status = '{JobStatus(s).value}' AND priority = {r}" for s in statuses for r in ranks]


_Key = tuple[datetime, UUID]
_FIRST_ID = UUID(int=0)


def _bounds(
    selection: JobSelection, past: _Key | None, newest_first: bool
) -> tuple[tuple[_Key, str] | None, tuple[_Key, str] | None]:
    """The tightest lower and upper bound on ``(created_at, id)`` that the selection's
    times and the keys ``past`` put, each with its operator; ``None`` where there is
    none."""
    lower: list[tuple[_Key, str]] = []
    upper: list[tuple[_Key, str]] = []
    if selection.created_after:
        lower.append(((selection.created_after, _FIRST_ID), ">="))
    if selection.created_before:
        upper.append(((selection.created_before, _FIRST_ID), "<"))
    if past is not None:
        (upper if newest_first else lower).append((past, "<" if newest_first else ">"))
    # On equal keys the strict bound is the tighter.
    tightest_lower = max(lower, key=lambda b: (b[0], b[1] == ">"), default=None)
    return tightest_lower, min(upper, default=None)


def _in_list_order(
    selection: JobSelection,
    *,
    columns: str,
    limit: int,
    newest_first: bool,
    past: _Key | None = None,
) -> tuple[str, list[object], str]:
    """The first ``limit`` selected jobs' ``columns`` (``created_at`` and ``id`` among
    them) in list order, those past the keys ``past`` only; the statement, its
    arguments, and the ORDER BY its rows come in (the leading column first where it is
    read as a range: one value, so the same order)."""
    direction = " DESC" if newest_first else ""
    # The limit is a literal too: with ``LIMIT $1`` a generic plan is costed as if a
    # tenth of each range were read, so at millions of jobs PostgreSQL plans every
    # execution anew (0.45 ms for three parts) instead of reusing its plan.
    rows = int(limit)
    args: list[object] = []
    shared, value = _conditions(selection, args)
    lower, upper = _bounds(selection, past, newest_first)
    in_time: list[str] = []
    for (at, job_id), op in filter(None, (lower, upper)):
        args.extend((at, job_id))
        in_time.append(f"(created_at, id) {op} (${len(args) - 1}::timestamptz, ${len(args)}::uuid)")
    leading = _leading(selection)
    # The leading value as a range (see ``arm``) unless the selection ends in time on
    # the far side of its order: after a range on the leading column, a condition on
    # created_at would not end the scan.
    as_range = leading is not None and (lower if newest_first else upper) is None
    if as_range and columns != "*":
        columns = f"{columns}, {leading}"  # the merge orders by it

    def ordered(*keys: str) -> str:
        return ", ".join(f"{key}{direction}" for key in (*keys, "created_at", "id"))

    def arm(part: str) -> str:
        owner_running = leading == "created_by" and part.startswith(_RUNNING)
        if leading is None:
            where, order = [part, *in_time], ordered()
        elif as_range and not owner_running:
            # The leading value is matched as a range, not with =, so that the planner
            # does not take it for a constant: the part must then come in (column,
            # created_at, id) order, which only the index holding that column after
            # status and priority gives. With =, the status index (created_at order
            # within a status and priority) competes on estimated cost, and where few
            # of its rows have this value it walks them all (a generic plan takes
            # every value for as common as the average one).
            where = [part, f"{leading} >= {value} AND {leading} <= {value}", *in_time]
            order = ordered(leading)
        else:
            # With =, the far time ends the scan of whichever index the planner takes:
            # at worst the jobs of this status and priority in the selection's time.
            # No half of the owner index holds running jobs: the status index does, the
            # owner checked row by row (at most the running jobs of this priority).
            where, order = [part, f"{leading} = {value}", *in_time], ordered()
        return (
            f"SELECT {columns} FROM jobs WHERE {' AND '.join([*where, *shared])}"
            f" ORDER BY {order} LIMIT {rows}"
        )

    arms = [arm(part) for part in _parts(selection)]
    outer = ordered(leading) if as_range and leading else ordered()
    if len(arms) == 1:
        return arms[0], args, outer
    # One value of the leading column: in its order too, the parts merge in list order.
    merged = " UNION ALL ".join(f"({a})" for a in arms)
    return f"SELECT * FROM ({merged}) arms ORDER BY {outer} LIMIT {rows}", args, outer


# What a page's jobs may weigh (their payloads, results, progress, errors and
# dependencies): 1,000 jobs of a 256 KiB payload and a 2 MiB result would be gigabytes
# in one answer. The jobs past it come on the next page (a page holds at least one job).
PAGE_BYTES = 16 * 1024 * 1024
# A JSON value's size as stored, read without detoasting it unless it is compressed
# (then its text: the stored size would understate it by its compression ratio). Text
# has its length in its header, compressed or not.
_JSON_SIZE = (
    "CASE WHEN pg_column_compression({c}) IS NULL THEN coalesce(pg_column_size({c}), 0)"
    " ELSE octet_length({c}::text) END"
)
_ROW_BYTES = " + ".join(
    [
        *(_JSON_SIZE.format(c=c) for c in ("payload", "result", "progress")),
        "coalesce(octet_length(error), 0)",
        "coalesce(pg_column_size(depends_on), 0)",
    ]
)


def page_query(
    selection: JobSelection, *, limit: int, cursor: str | None
) -> tuple[str, list[object]]:
    """A keyset page newest first (``limit`` rows, as many as fit ``PAGE_BYTES``), and
    its arguments. Each row comes with ``page_bytes``, what the page weighs up to it."""
    past = decode_cursor(cursor) if cursor else None
    page, args, order = _in_list_order(
        selection, columns="*", limit=limit, newest_first=True, past=past
    )
    # Only rows that start within the budget leave the database, and the second whatever
    # the first weighs: a row past the budget says there is a next page.
    return (
        "SELECT * FROM (SELECT s.*, sum(row_bytes) OVER w AS page_bytes,"
        " row_number() OVER w AS page_row"
        f" FROM (SELECT p.*, {_ROW_BYTES} AS row_bytes FROM ({page}) p) s"
        f" WINDOW w AS (ORDER BY {order})) sized"
        f" WHERE page_bytes - row_bytes <= {PAGE_BYTES} OR page_row <= 2 ORDER BY {order}"
    ), args


async def list_page(
    session: AsyncSession,
    *,
    selection: JobSelection,
    limit: int,
    cursor: str | None,
    name_search_seconds: float | None,
) -> tuple[list[Any], str | None]:
    """Newest first, keyset-paginated on (created_at, id): each page is an index scan,
    of at most ``limit`` jobs and ``PAGE_BYTES`` (``page_query``).
    With a name prefix, read for at most ``name_search_seconds`` (see ``_fetch``; the
    API's ``SWITCHYARD_MAX_NAME_SEARCH_SECONDS``)."""
    statement, args = page_query(selection, limit=limit + 1, cursor=cursor)
    rows = await _fetch(session, selection, statement, args, name_search_seconds)
    jobs = [SimpleNamespace(**dict(r)) for r in rows]
    page, more = within_budget(jobs, limit, PAGE_BYTES, lambda job: job.page_bytes)
    return page, encode_cursor(page[-1]) if more else None


def ids_query(selection: JobSelection, *, limit: int) -> tuple[str, list[object]]:
    """The first ``limit`` selected jobs' ids oldest first, and its arguments."""
    statement, args, _ = _in_list_order(
        selection, columns="id, created_at", limit=limit, newest_first=False
    )
    return statement, args


async def select_ids(
    session: AsyncSession | asyncpg.Connection,
    *,
    selection: JobSelection,
    limit: int,
    name_search_seconds: float | None,
) -> list[UUID]:
    """Up to ``limit`` ids of the selected jobs, oldest first. With a name prefix, read
    for at most ``name_search_seconds`` (see ``_fetch``)."""
    statement, args = ids_query(selection, limit=limit)
    rows = await _fetch(session, selection, statement, args, name_search_seconds)
    return [r["id"] for r in rows]


def plans_once(selection: JobSelection) -> bool:
    """Whether ``selection``'s statement is best planned once, for every value: its
    parts are bounded ranges whatever the type, owner, times and cursor, and only a
    name prefix (how many names it matches) makes another plan better. PostgreSQL's
    default re-plans a prepared statement while it estimates a custom plan cheaper: for
    a typed page of 32 parts that is about 5 ms of planning at every request, against
    0.6 ms to run it."""
    return not selection.name_prefix


async def _fetch(
    db: AsyncSession | asyncpg.Connection,
    selection: JobSelection,
    statement: str,
    args: list[object],
    name_search_seconds: float | None,
) -> list[Any]:
    """Run the statement in ``db``'s transaction (a session's, a connection's, or, to
    plan it once, one of its own), planned as ``plans_once`` says (the setting holds for
    the rest of that transaction).

    A name prefix is not read in list order by one range of any index: the planner
    takes the prefix's range of the name index (sorted after) or the other parts'
    ranges, checking each row's name. Where the prefix matches many jobs and few of
    them are selected, either reads every job one side matches (0.5–0.7 s at 5M jobs).
    So such a read is given ``name_search_seconds`` (``None``: the connection's command
    timeout): past it asyncpg cancels the statement (a caller's transaction is then to
    be rolled back) and ``SearchTooBroad`` is raised, unless the connection was lost
    (an outage: the ``TimeoutError`` goes on)."""
    generic = plans_once(selection)
    if generic and isinstance(db, asyncpg.Connection) and not db.is_in_transaction():
        async with db.transaction():  # SET LOCAL needs one
            return await _fetch(db, selection, statement, args, name_search_seconds)
    conn = await session_connection(db) if isinstance(db, AsyncSession) else db
    if generic:
        # For this transaction only; the statement is prepared once per connection.
        await conn.execute(f"SET LOCAL plan_cache_mode = {GENERIC_PLANS['plan_cache_mode']}")
    timeout = name_search_seconds if selection.name_prefix else None
    try:
        return await conn.fetch(statement, *args, timeout=timeout)  # type: ignore[no-any-return]
    except TimeoutError:
        if timeout is None or conn.is_closed():
            raise
    # Raised here, not in the handler: the timeout is not this error's cause (an
    # outage check that walks the chain must not find it).
    log.warning(
        "a name search (prefix %r) took more than %g s; refused",
        selection.name_prefix,
        name_search_seconds,
    )
    raise SearchTooBroad(
        f"name: the jobs whose name starts with {selection.name_prefix!r} could not be "
        f"read within {name_search_seconds:g} s. A name search is slow where the prefix "
        "matches many jobs that the other filters leave out: give more of the name, or a "
        "created_after / created_before window (or try again if the database is busy)"
    )
