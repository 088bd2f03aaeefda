"""The direct job serializer writes exactly what pydantic writes for JobRead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from shared.jobs.views import job_json, job_to_read, jobs_json
from shared.schemas import BatchRead

T0 = datetime(2026, 11, 23, 9, 30, 0, tzinfo=UTC)  # no microseconds
T1 = datetime(2026, 11, 23, 9, 30, 1, 123456, tzinfo=UTC)


def row(**overrides: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "id": uuid4(), "type": "demo.echo", "name": None, "status": "ready", "priority": 2,
        "payload": {"i": 1, "nested": {"ünï": [1.5, None, True]}}, "cpu_units": 0.5,
        "memory_mb": 64, "depends_on": [], "max_attempts": 3, "retry_initial_delay": 1.0,
        "retry_backoff": 2.0, "retry_max_delay": 300.0, "timeout_seconds": None,
        "attempts": 0, "worker_id": None, "result": None, "error": None, "progress": None,
        "created_at": T1, "updated_at": T1, "started_at": None, "finished_at": None,
        "run_at": T1, "created_by": "key-1", "idempotency_key": None,
        "cancel_requested": False, "waiting_reason": None, "unmet_dependencies": 0,
    }  # fmt: skip
    values.update(overrides)
    return SimpleNamespace(**values)


CASES = [
    row(),
    row(status="ready", waiting_reason="no worker runs 'x'", priority=0, cpu_units=2.0),
    row(status="pending", run_at=T1 + timedelta(hours=1), priority=3, name="later"),
    row(status="blocked", depends_on=[uuid4(), uuid4()], unmet_dependencies=2),
    row(
        status="completed",
        attempts=2,
        worker_id="w1",
        result={"ok": [1, 2.25, "x"]},
        started_at=T0,
        finished_at=T1,
        timeout_seconds=30.0,
        created_at=T0,
        updated_at=T0,
        progress={"done": 3, "total": 3, "message": None, "ts": "2026-11-23T09:30:00Z"},
    ),
    row(status="failed", attempts=3, error="attempt 3 of 3 failed: boom", result=7),
    row(status="retrying", attempts=1, run_at=T0, idempotency_key="k-1", priority=1),
    row(status="running", attempts=1, worker_id="w2", cancel_requested=True, result="text"),
]


@pytest.mark.parametrize("job", CASES, ids=lambda j: j.status)
def test_one_job_same_bytes_as_pydantic(job: SimpleNamespace) -> None:
    assert job_json(job) == job_to_read(job).model_dump_json().encode()  # type: ignore[arg-type]


def test_a_batch_answer_same_bytes_as_pydantic() -> None:
    expected = BatchRead(jobs=[job_to_read(j) for j in CASES]).model_dump_json()  # type: ignore[arg-type]
    assert jobs_json(CASES) == expected.encode()


def test_insert_defaults_cover_every_other_column() -> None:
    """A batch answers from the rows it inserted plus INSERT_DEFAULTS (no RETURNING *):
    together they must name every column of ``jobs``, each default the server's."""
    from shared.jobs.sql import INSERT_COLUMNS as _INSERT_TYPES
    from shared.jobs.sql import INSERT_DEFAULTS
    from shared.models import Job

    columns = Job.__table__.columns
    assert set(_INSERT_TYPES) | set(INSERT_DEFAULTS) == set(columns.keys())
    assert not set(_INSERT_TYPES) & set(INSERT_DEFAULTS)
    for name, value in INSERT_DEFAULTS.items():
        default = columns[name].server_default
        if default is None:
            assert value is None, name
        else:
            assert str(default.arg).lower() == str(value).lower(), name
