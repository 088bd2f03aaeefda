"""A job on the wire: the one encoder of a stored job into the API's JSON.

Every answer that carries jobs (``JobRead``, ``BatchRead``, ``JobPage`` in
``shared/schemas.py``) is written here with orjson, straight from the stored rows: no
pydantic model is built per job (the cost is in docs/performance-history.md). The schemas still
describe the answers in the OpenAPI
document and in the client; ``tests/unit/test_job_json.py`` checks that what is written
here validates as them and is exactly what pydantic writes for the validated model
(field order, ``Z`` times, floats), so a field added to ``JobRead`` and not here fails.

A stored job is read by attribute: an ORM ``Job``, or a ``SimpleNamespace`` of the same
columns (the list page's rows, the rows a submission inserted).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import orjson

from shared.models import Job
from shared.placement_rules import free_capacity_reason
from shared.schemas import Priority
from shared.states import JobStatus

S = JobStatus

StoredJob = Job | SimpleNamespace

_PRIORITY_NAME = {rank: Priority.from_rank(rank).value for rank in range(4)}


def job_json(job: StoredJob) -> bytes:
    """One job: ``JobRead``."""
    return _dumps(job_dict(job))


def batch_json(jobs: Sequence[StoredJob]) -> bytes:
    """The jobs of a batch submission: ``BatchRead``."""
    return _dumps({"jobs": [job_dict(j) for j in jobs]})


def batch_of_json(jobs: Sequence[bytes]) -> bytes:
    """``BatchRead`` of jobs each already written as ``job_json`` writes it (joined
    once: each copy of a body of megabytes costs its pages anew)."""
    if not jobs:
        return b'{"jobs":[]}'
    pieces = [b","] * (2 * len(jobs) + 1)  # [open, job, ",", job, ..., job, close]
    pieces[0], pieces[-1] = b'{"jobs":[', b"]}"
    pieces[1::2] = jobs
    return b"".join(pieces)


# What stands in a template for a job's own id, name and payload while the rest is
# written: 128 random bits each, which no value of a job holds by chance (and each must
# be found once, or the template is refused).
_OWN = ("id", "name", "payload")
_MARKS = {field: f"{field}-{secrets.token_hex(16)}" for field in _OWN}


class JobTemplate:
    """``job_json`` of jobs that differ from ``job`` only in id, name and payload: the
    rest written once, each job its own three values between the template's bytes
    (``shared.jobs.plain_batch``: a job is a quarter of the work of a dict copied and
    written whole)."""

    __slots__ = ("_parts",)

    def __init__(self, job: StoredJob) -> None:
        rest = _dumps({**job_dict(job), **_MARKS})  # the marks keep JobRead's order
        parts = []
        for field in _OWN:
            mark = orjson.dumps(_MARKS[field])
            before, found, rest = rest.partition(mark)
            if not found or mark in rest:
                raise ValueError(f"a job's {field} mark is not in its template once")
            parts.append(before)
        parts.append(rest)
        self._parts = tuple(parts)

    def json(self, job_id: UUID, name: str | None, payload_json: bytes) -> bytes:
        """``job_json`` of the job with these values (its payload already encoded). A
        ``uuid.UUID`` is written by orjson itself (a sixth of the time ``str`` takes);
        asyncpg's own UUID type goes through ``str``."""
        head, after_id, after_name, tail = self._parts
        return b"".join(
            (head, orjson.dumps(job_id, default=str), after_id, orjson.dumps(name), after_name,
             payload_json, tail)
        )  # fmt: skip


def page_json(jobs: Sequence[StoredJob], next_cursor: str | None) -> bytes:
    """A page of the job list: ``JobPage``."""
    return _dumps({"items": [job_dict(j) for j in jobs], "next_cursor": next_cursor})


def _dumps(value: dict[str, Any]) -> bytes:
    # OPT_UTC_Z: pydantic writes a UTC time with "Z", not "+00:00".
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def job_dict(job: StoredJob) -> dict[str, Any]:
    """``JobRead``'s fields, in its order, as JSON-ready values (floats as floats)."""
    return {
        "id": str(job.id),
        "type": job.type,
        "name": job.name,
        "status": job.status,
        "priority": _PRIORITY_NAME[job.priority],
        "payload": job.payload,
        "resources": {"cpu_units": float(job.cpu_units), "memory_mb": job.memory_mb},
        "depends_on": [str(d) for d in job.depends_on or ()],
        "retry": {
            "max_attempts": job.max_attempts,
            "initial_delay_seconds": float(job.retry_initial_delay),
            "backoff_multiplier": float(job.retry_backoff),
            "max_delay_seconds": float(job.retry_max_delay),
        },
        "timeout_seconds": None if job.timeout_seconds is None else float(job.timeout_seconds),
        "attempts": job.attempts,
        "worker_id": job.worker_id,
        "result": job.result,
        "error": job.error,
        "progress": job.progress,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "run_at": job.run_at,
        "created_by": job.created_by,
        "idempotency_key": job.idempotency_key,
        "cancel_requested": job.cancel_requested,
        "waiting_reason": waiting_reason(job),
    }


def waiting_reason(job: StoredJob) -> str | None:
    """Why a job is not running yet, in words (None once it runs or ends)."""
    match job.status:
        case S.BLOCKED:
            n = job.unmet_dependencies
            return f"waiting on {n} unfinished dependenc{'y' if n == 1 else 'ies'}"
        case S.PENDING:
            return f"delayed: not before {job.run_at.isoformat()}"
        case S.RETRYING:
            return (
                f"attempt {job.attempts} failed; attempt {job.attempts + 1} not before "
                f"{job.run_at.isoformat()}"
            )
        case S.READY:
            return job.waiting_reason or free_capacity_reason(
                job.type, job.cpu_units, job.memory_mb
            )
    return None
