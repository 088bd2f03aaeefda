"""Task types as the API sees them: the ``task_types`` table, cached briefly in memory.

Workers announce their registries into ``task_types`` (the API announces the demo tasks
too), so the API validates submissions without importing anyone's task code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import AuditEntry, TaskType
from shared.schemas import Resources, RetryPolicy
from shared.settings import ROLES
from shared.single_flight import SingleFlight
from shared.tasks import TaskRegistry

log = logging.getLogger("switchyard.catalog")

T = TypeVar("T")


@dataclass(frozen=True)
class TaskTypeInfo:
    name: str
    parameters_schema: dict[str, Any]
    resources: Resources
    timeout_seconds: float | None
    retry: RetryPolicy
    roles: frozenset[str]
    validator: jsonschema.protocols.Validator
    any_object: bool = False  # the schema accepts every object: nothing to check

    def payload_errors(self, payload: dict[str, Any]) -> list[str]:
        """Human-readable errors naming the field, e.g. ``payload.seconds: ...``."""
        if self.any_object:
            return []  # the payload is an object already (the request model says so)
        if self.validator.is_valid(payload):  # the common case: no error objects built
            return []
        messages = []
        for error in sorted(self.validator.iter_errors(payload), key=lambda e: list(e.path)):
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            messages.append(f"payload{path}: {error.message}")
        return messages


def _info_from_row(row: TaskType) -> TaskTypeInfo:
    schema = row.parameters_schema or {"type": "object"}
    validator_cls = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    return TaskTypeInfo(
        name=row.name,
        parameters_schema=schema,
        resources=Resources(cpu_units=row.cpu_units, memory_mb=row.memory_mb),
        timeout_seconds=row.timeout_seconds,
        retry=RetryPolicy(
            max_attempts=row.max_attempts,
            initial_delay_seconds=row.retry_initial_delay,
            backoff_multiplier=row.retry_backoff,
            max_delay_seconds=row.retry_max_delay,
        ),
        roles=frozenset(row.roles or ()),
        validator=validator_cls(schema),
        any_object=schema == {"type": "object"},
    )


class TaskCatalog:
    """Read-through cache of ``task_types``: a changed definition shows within ``ttl``;
    unknown names are not cached, so a newly announced type is accepted at once (at
    the latest once a read under way when it was announced is over). The submits that
    miss a name at the same moment (its entry expired under load) share one read."""

    def __init__(self, *, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, TaskTypeInfo]] = {}
        self._reads: SingleFlight[TaskTypeInfo | None] = SingleFlight()
        self._names: SingleFlight[list[str]] = SingleFlight()

    def cached(self, name: str) -> TaskTypeInfo | None:
        """The type as read less than ``ttl`` ago, without asking the database."""
        cached = self._entries.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        return None

    async def get(self, session: AsyncSession, name: str) -> TaskTypeInfo | None:
        info = self.cached(name)
        if info is not None:
            return info
        return await _shared(self._reads, name, session, lambda: self._read(session, name))

    async def _read(self, session: AsyncSession, name: str) -> TaskTypeInfo | None:
        row = await session.get(TaskType, name)
        if row is None:
            return None  # not cached: a worker announcing it makes it valid at once
        info = _info_from_row(row)
        self._entries[name] = (time.monotonic(), info)
        return info

    async def names(self, session: AsyncSession) -> list[str]:
        """Every known name (for the message that refuses an unknown one: the requests
        that want it at the same moment share one read)."""

        async def read() -> list[str]:
            names = await session.scalars(select(TaskType.name).order_by(TaskType.name))
            return list(names.all())

        return await _shared(self._names, "", session, read)


async def _shared(
    reads: SingleFlight[T], key: str, session: AsyncSession, read: Callable[[], Awaitable[T]]
) -> T:
    """``read()``, shared with the callers that want ``key`` at the same moment, unless
    ``session`` holds a connection already: reading on it costs the pool nothing,
    whereas waiting for a reader that waits for the pool could take the pool's last
    connections from it."""
    if session.in_transaction():
        return await read()
    return await reads.read(key, read)


def may_submit(roles: Iterable[str]) -> frozenset[str]:
    """The roles that may submit a type requiring ``roles``: admin always; none
    required, every role (the route still needs ``submitter``)."""
    required = frozenset(roles)
    return required | {"admin"} if required else frozenset(ROLES)


def roles_to_store(stored: Iterable[str], announced: Iterable[str]) -> list[str]:
    """A type's roles after an announcement: as announced unless that would let in a
    role the stored ones keep out. Roles only tighten through announcements (a stale or
    careless worker must not open an admin-only task to everyone); relaxing them is an
    operator's act (docs/tasks.md)."""
    stored, announced = sorted(stored), sorted(announced)
    allowed = may_submit(stored) & may_submit(announced)
    if allowed == may_submit(announced):
        return announced
    return stored if allowed == may_submit(stored) else sorted(allowed)


async def announce_task_types(
    session: AsyncSession, registry: TaskRegistry, *, announcer: str = "task-announcement"
) -> None:
    """Upsert every task of ``registry`` into ``task_types`` (the caller commits).

    The other fields are as announced (the last announcement wins), but roles never
    weaken (``roles_to_store``): kept roles are logged and audited as
    ``task_type.roles_kept`` with ``announcer`` (who announced) as the actor.
    """
    rows: list[dict[str, Any]] = [
        {
            "name": d.name,
            "parameters_schema": d.parameters_schema(),
            "cpu_units": d.resources.cpu_units,
            "memory_mb": d.resources.memory_mb,
            "timeout_seconds": d.timeout_seconds,
            "max_attempts": d.retry.max_attempts,
            "retry_initial_delay": d.retry.initial_delay_seconds,
            "retry_backoff": d.retry.backoff_multiplier,
            "retry_max_delay": d.retry.max_delay_seconds,
            "roles": sorted(d.roles),
            "description": d.description,
        }
        for d in sorted(registry, key=lambda d: d.name)
    ]
    if not rows:
        return
    # Announcements one at a time (they are rare: a worker's start), so the roles read
    # below are still the stored ones when the upsert writes.
    await session.execute(text("SELECT pg_advisory_xact_lock(1937, 1)"))
    names = [r["name"] for r in rows]
    found = await session.execute(
        select(TaskType.name, TaskType.roles).where(TaskType.name.in_(names))
    )
    stored: dict[str, list[str]] = {name: roles for name, roles in found}
    for row in rows:
        if row["name"] not in stored:
            continue
        announced: list[str] = row["roles"]
        kept = roles_to_store(stored[row["name"]] or [], announced)
        if kept != announced:
            log.warning(
                "%s announced task type %r with roles %s, weaker than the catalog's %s: "
                "kept %s (roles only tighten through announcements; see docs/tasks.md)",
                announcer, row["name"], announced or "none", stored[row["name"]], kept,
            )  # fmt: skip
            session.add(
                AuditEntry(
                    actor=announcer, role=None, action="task_type.roles_kept",
                    outcome="kept", detail={"task_type": row["name"],
                                            "announced": announced, "kept": kept},
                )
            )  # fmt: skip
            row["roles"] = kept
    stmt = insert(TaskType).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[TaskType.name],
        set_={col: stmt.excluded[col] for col in rows[0] if col != "name"}
        | {"updated_at": func.now()},
    )
    await session.execute(stmt)
