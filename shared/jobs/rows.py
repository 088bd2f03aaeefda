"""A new job's row: its values as the ``jobs`` table holds them (``job_row``), and as
they travel to the insert statements (``wire_row``, ``wire_columns``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shared.auth import Actor
from shared.jobs import sql, transitions
from shared.jobs.prepare import Prepared
from shared.schemas import BatchJobCreate, JobCreate
from shared.states import JobStatus, initial_status

S = JobStatus


def start_time(requested: datetime | None, now: datetime) -> datetime:
    """A job's ``run_at``: when it asked to start, never earlier than its submission.
    Jobs of one priority are taken in ``run_at`` order, so a time in the past would
    jump the queue; it means "now". In UTC, as the database answers it (the batch
    answer is built from this row)."""
    return max(requested.astimezone(UTC), now) if requested is not None else now


def uuid_array(ids: Sequence[UUID]) -> str:
    """A uuid[] literal."""
    return "{" + ",".join(str(i) for i in ids) + "}"


def job_row(
    it: Prepared,
    *,
    status: str,
    run_at: datetime,
    now: datetime,
    actor: Actor,
    dep_ids: list[UUID],
    unmet: int,
    error: str | None,
) -> dict[str, Any]:
    """The ``jobs`` row of a prepared submission (the columns of ``sql.INSERT_COLUMNS``
    in order, as Python values), then its payload as JSON text (``payload_json``).
    (tests/unit/test_job_json.py checks the order.)"""
    spec = it.spec
    return {
        "id": it.id,
        "type": spec.type,
        "name": spec.name,
        "status": str(status),
        "priority": spec.priority.rank,
        "payload": spec.payload,
        "cpu_units": it.resources.cpu_units,
        "memory_mb": it.resources.memory_mb,
        "timeout_seconds": it.timeout_seconds,
        "max_attempts": it.retry.max_attempts,
        "retry_initial_delay": it.retry.initial_delay_seconds,
        "retry_backoff": it.retry.backoff_multiplier,
        "retry_max_delay": it.retry.max_delay_seconds,
        "run_at": run_at,
        "depends_on": dep_ids,
        "unmet_dependencies": unmet,
        "error": error,
        "idempotency_key": spec.idempotency_key,
        "idempotency_fingerprint": it.fingerprint if spec.idempotency_key else None,
        "created_by": actor.key_id,
        "created_at": now,
        "updated_at": now,
        "ready_at": now if status == S.READY else None,
        "finished_at": now if status == S.FAILED else None,
        "payload_json": it.payload_json,
    }


# The columns whose value travels otherwise than the row holds it: the payload as its
# JSON text, the parents as a uuid[] literal (a column of arrays cannot travel as one
# array of arrays).
_WIRE_FORMS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "payload": lambda row: row["payload_json"],
    "depends_on": lambda row: uuid_array(row["depends_on"]),
}


def wire_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as they travel (``sql.INSERT_COLUMNS``)."""
    wire = {name: row[name] for name in sql.INSERT_COLUMNS}
    wire.update((name, form(row)) for name, form in _WIRE_FORMS.items())
    return wire


def wire_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows as they travel, one list per column: built column by column, without a
    ``wire_row`` copy of each row."""
    columns = transitions.as_columns(rows)
    columns.update((name, [form(row) for row in rows]) for name, form in _WIRE_FORMS.items())
    return columns


def is_plain(spec: JobCreate | BatchJobCreate) -> bool:
    """No parent (no rows to lock, no order among a batch's jobs, its first status its
    own) and no idempotency key (no lookup, no race): such a job's row and its audit
    row can go in by themselves (``plain_row``)."""
    return not spec.depends_on and not spec.idempotency_key


def plain_row(it: Prepared, *, now: datetime, actor: Actor) -> dict[str, Any]:
    """``job_row`` of a job ``is_plain`` accepts, submitted at ``now``: ready, or pending
    when it asked to start later."""
    run_at = start_time(it.spec.run_at, now)
    status = initial_status(unmet_dependencies=0, failed_dependency=False, delayed=run_at > now)
    return job_row(
        it, status=status, run_at=run_at, now=now, actor=actor, dep_ids=[], unmet=0, error=None
    )
