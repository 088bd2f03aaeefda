"""A submission checked before anything is stored: its task type, role, payload, limits
and defaults, and the references between the jobs of one batch."""

from __future__ import annotations

import graphlib
import hashlib
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.catalog import TaskCatalog, TaskTypeInfo
from shared.errors import InvalidJobRequest, PermissionDenied
from shared.ids import uuid7
from shared.jsonvalues import encoded_within
from shared.schemas import BatchJobCreate, JobCreate, Resources, RetryPolicy, check_json_value
from shared.settings import Settings


def _default(name: str) -> int:
    return int(Settings.model_fields[name].default)


@dataclass(frozen=True)
class Limits:
    """The submission limits of SWITCHYARD_MAX_* (defaults: the settings' own)."""

    max_payload_bytes: int = _default("max_payload_bytes")
    max_json_depth: int = _default("max_json_depth")
    max_dependencies: int = _default("max_dependencies")
    max_batch_jobs: int = _default("max_batch_jobs")

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            max_json_depth=settings.max_json_depth,
            max_dependencies=settings.max_dependencies,
            max_batch_jobs=settings.max_batch_jobs,
        )


@dataclass
class Prepared:
    """A validated submission with defaults applied, ready to insert."""

    id: UUID
    spec: JobCreate | BatchJobCreate
    task: TaskTypeInfo
    resources: Resources
    retry: RetryPolicy
    timeout_seconds: float | None
    fingerprint: str
    payload_json: str  # the payload as JSON text (encoded once, for the size check)
    external_deps: list[UUID] = field(default_factory=list)
    local_deps: list[int] = field(default_factory=list)  # indexes into the batch
    existing: Any = None  # idempotent repeat: the job already stored


async def prepare_submission(
    session: AsyncSession,
    catalog: TaskCatalog,
    spec: JobCreate | BatchJobCreate,
    actor: Actor,
    limits: Limits,
    *,
    where: str,
) -> Prepared:
    task = await task_type(session, catalog, spec.type, where=where)
    return prepare(task, spec, actor, limits, where=where)


async def task_type(
    session: AsyncSession, catalog: TaskCatalog, name: str, *, where: str
) -> TaskTypeInfo:
    task = await catalog.get(session, name)
    if task is None:
        known = await catalog.names(session)
        raise InvalidJobRequest(
            f"{where}type: unknown task type {name!r}; registered types: "
            + (", ".join(known) if known else "none (start a worker that registers tasks)")
        )
    return task


def prepare(
    task: TaskTypeInfo,
    spec: JobCreate | BatchJobCreate,
    actor: Actor,
    limits: Limits,
    *,
    where: str,
) -> Prepared:
    """Validate ``spec`` against its task type and the limits; apply the defaults."""
    encoded = _check(task, spec, actor, limits, where=where)
    # The task's defaults as they are when the request gives none (they are not mutated).
    resources = task.resources
    if spec.resources:
        resources = resources.model_copy(update=spec.resources.model_dump(exclude_none=True))
    retry = task.retry
    if spec.retry:
        retry = retry.model_copy(update=spec.retry.model_dump(exclude_none=True))
    timeout = spec.timeout_seconds if spec.timeout_seconds is not None else task.timeout_seconds
    # The fingerprint covers the request after defaults, so "same request" means the
    # same job would be built; run_at counts only when the client gave one. Only an
    # idempotency key needs it.
    fingerprint = ""
    if spec.idempotency_key:
        fingerprint = _fingerprint(spec, resources, retry, timeout)
    return Prepared(
        id=uuid7(),
        spec=spec,
        task=task,
        resources=resources,
        retry=retry,
        timeout_seconds=timeout,
        fingerprint=fingerprint,
        payload_json=encoded.decode(),
    )


def _check(
    task: TaskTypeInfo,
    spec: JobCreate | BatchJobCreate,
    actor: Actor,
    limits: Limits,
    *,
    where: str,
) -> bytes:
    """Refuse what ``spec`` may not ask; the payload encoded (for its size, and to store)."""
    if task.roles and not actor.has_role("admin") and actor.role not in task.roles:
        raise PermissionDenied(
            f"task type {spec.type!r} may only be submitted by role(s) "
            f"{', '.join(sorted(task.roles | {'admin'}))}; your key has role {actor.role!r}"
        )
    try:
        check_json_value(spec.payload, max_depth=limits.max_json_depth, where=f"{where}payload")
        encoded = encoded_within(spec.payload, limits.max_payload_bytes, where=f"{where}payload")
    except ValueError as exc:
        raise InvalidJobRequest(str(exc)) from exc
    errors = task.payload_errors(spec.payload)
    if errors:
        raise InvalidJobRequest("; ".join(f"{where}{e}" for e in errors))
    if len(spec.depends_on) > limits.max_dependencies:
        raise InvalidJobRequest(
            f"{where}depends_on lists {len(spec.depends_on)} jobs; "
            f"the limit is {limits.max_dependencies}"
        )
    return encoded


def _fingerprint(
    spec: JobCreate | BatchJobCreate,
    resources: Resources,
    retry: RetryPolicy,
    timeout: float | None,
) -> str:
    canonical = {
        "type": spec.type,
        "payload": spec.payload,
        "priority": spec.priority.value,
        "resources": resources.model_dump(),
        "retry": retry.model_dump(),
        "timeout_seconds": timeout,
        "run_at": spec.run_at.isoformat() if spec.run_at else None,
        "depends_on": sorted(str(d) for d in spec.depends_on),
        "name": spec.name,
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def resolve_batch_refs(items: list[Prepared]) -> None:
    """Turn ``@ref`` / id strings into local indexes / external ids; refuse cycles."""
    refs: dict[str, int] = {}
    for i, item in enumerate(items):
        ref = getattr(item.spec, "ref", None)
        if ref is None:
            continue
        if ref in refs:
            raise InvalidJobRequest(f"jobs[{i}].ref: {ref!r} is used by jobs[{refs[ref]}] too")
        refs[ref] = i
    for i, item in enumerate(items):
        for dep in item.spec.depends_on:
            dep_s = str(dep)
            if dep_s.startswith("@"):
                index = refs.get(dep_s[1:])
                if index is None:
                    raise InvalidJobRequest(
                        f"jobs[{i}].depends_on: {dep_s!r} names no job of this batch "
                        f"(refs: {', '.join(sorted(refs)) or 'none'})"
                    )
                if index not in item.local_deps:
                    item.local_deps.append(index)
            else:
                try:
                    ext = UUID(dep_s)
                except ValueError:
                    raise InvalidJobRequest(
                        f"jobs[{i}].depends_on: {dep_s!r} is neither a job id nor '@ref'"
                    ) from None
                if ext not in item.external_deps:
                    item.external_deps.append(ext)
    if not any(item.local_deps for item in items):
        return  # no edges inside the batch: no cycle to look for
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter(
        {i: item.local_deps for i, item in enumerate(items)}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]

        def label(i: int) -> str:
            return getattr(items[i].spec, "ref", None) or f"jobs[{i}]"

        raise InvalidJobRequest(
            "depends_on forms a cycle: " + " -> ".join(label(i) for i in reversed(cycle))
        ) from None
