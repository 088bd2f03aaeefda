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

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

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
    return batch_dicts_json([job_dict(j) for j in jobs])


def batch_dicts_json(jobs: list[dict[str, Any]]) -> bytes:
    """``BatchRead`` of jobs already written as ``job_dict`` writes them
    (``shared.jobs.plain_batch`` copies them from one per shape)."""
    return _dumps({"jobs": jobs})


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
