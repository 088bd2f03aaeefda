"""The one job encoder (``shared.jobs.views``) writes its schemas: every answer validates
as ``JobRead`` / ``BatchRead`` / ``JobPage``, and pydantic, given the validated model,
writes the same bytes (field order, ``Z`` times, floats). A field added to a schema but
not to the encoder fails here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import asyncpg.pgproto.pgproto as pgproto
import orjson
import pytest
from pydantic import BaseModel

from shared.jobs.views import JobTemplate, batch_json, batch_of_json, job_json, page_json
from shared.models import Job
from shared.schemas import BatchRead, JobPage, JobRead

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
    # Python-built rows (a submission answers from what it inserted): ints in float
    # columns are still written as floats; a time with an offset keeps it.
    row(
        cpu_units=2, retry_initial_delay=1, retry_backoff=3, retry_max_delay=60, timeout_seconds=30
    ),
    row(status="pending", run_at=datetime(2030, 1, 1, 10, tzinfo=timezone(timedelta(hours=2)))),
    row(
        payload={"big": 1e16, "small": 1e-05, "neg": -0.0, "int": 2**63 - 1, "s": "tab\t\x01 é 🎉"}
    ),
]


def orm_job(**overrides: Any) -> Job:
    """The same row as an ORM object (what the read, cancel and retry routes hand over)."""
    values = vars(row(**overrides))
    return Job(**values)


def assert_writes_schema(model: type[BaseModel], body: bytes) -> None:
    validated = model.model_validate_json(body)
    assert validated.model_dump_json().encode() == body


@pytest.mark.parametrize("job", CASES, ids=lambda j: j.status)
def test_one_job_is_a_job_read(job: SimpleNamespace) -> None:
    assert_writes_schema(JobRead, job_json(job))


@pytest.mark.parametrize("status", ["blocked", "completed"])
def test_an_orm_job_is_a_job_read(status: str) -> None:
    job = orm_job(status=status, depends_on=[uuid4()], unmet_dependencies=1, result=[1, "a"])
    assert_writes_schema(JobRead, job_json(job))


def test_a_batch_answer_is_a_batch_read() -> None:
    assert_writes_schema(BatchRead, batch_json(CASES))


# A job's own values, as a plain batch's jobs differ from their shape's first job.
OWN_VALUES = [
    (uuid4(), None, {}),
    (uuid4(), "a name", {"i": 1}),
    (uuid4(), 'quote " back \\ tab \t ctl \x01 é 🎉 \u2028', {"l": ["x", None, 1.5, -0.0, 1e16]}),
    (pgproto.UUID(str(uuid4())), "asyncpg's uuid", {"s": "text"}),
    (uuid4(), "", {"deep": [[{"a": [2**63 - 1, -(2**63)]}]]}),
    (uuid4(), "x" * 200, {"": None}),
]


@pytest.mark.parametrize("shape", CASES, ids=lambda j: j.status)
def test_a_template_writes_each_job_as_job_json_does(shape: SimpleNamespace) -> None:
    """Byte for byte: a job written from its shape's template is the job written whole,
    whatever its id, name and payload (the template's marks take their places only)."""
    template = JobTemplate(shape)
    written = []
    for job_id, name, payload in OWN_VALUES:
        job = SimpleNamespace(**{**vars(shape), "id": job_id, "name": name, "payload": payload})
        written.append(template.json(job_id, name, orjson.dumps(payload)))
        assert written[-1] == job_json(job)
    for jobs in (written[:1], written):
        assert_writes_schema(BatchRead, batch_of_json(jobs))
        assert orjson.loads(batch_of_json(jobs))["jobs"] == [orjson.loads(j) for j in jobs]
    assert batch_of_json([]) == b'{"jobs":[]}' == batch_json([])


def test_a_template_refuses_a_job_that_holds_a_mark() -> None:
    """A value that holds a mark would be taken for a job's own: refused, not written
    wrong (the marks are 128 random bits: no job holds one but on purpose)."""
    from shared.jobs import views

    with pytest.raises(ValueError, match="name mark"):
        JobTemplate(row(error=views._MARKS["name"], status="failed"))


@pytest.mark.parametrize("next_cursor", ["MjAyNi0xMS0yM1Q", None])
def test_a_list_page_is_a_job_page(next_cursor: str | None) -> None:
    assert_writes_schema(JobPage, page_json(CASES, next_cursor))
    assert_writes_schema(JobPage, page_json([], next_cursor))


def test_each_field_says_what_the_row_says() -> None:
    """The round trip above cannot see two fields swapped; this names each one."""
    parent = uuid4()
    job = row(
        status="blocked", priority=1, name="n", cpu_units=1.5, memory_mb=96,
        depends_on=[parent], unmet_dependencies=1, max_attempts=5, retry_initial_delay=2.0,
        retry_backoff=3.0, retry_max_delay=40.0, timeout_seconds=9.0, attempts=4,
        worker_id="w", result={"r": 1}, error="e", progress={"done": 1}, created_at=T0,
        updated_at=T1, started_at=T0, finished_at=T1, run_at=T0, created_by="k",
        idempotency_key="i", cancel_requested=True,
    )  # fmt: skip
    read = JobRead.model_validate_json(job_json(job))
    assert read.model_dump() == {
        "id": job.id, "type": "demo.echo", "name": "n", "status": "blocked",
        "priority": "high", "payload": job.payload,
        "resources": {"cpu_units": 1.5, "memory_mb": 96}, "depends_on": [parent],
        "retry": {"max_attempts": 5, "initial_delay_seconds": 2.0, "backoff_multiplier": 3.0,
                  "max_delay_seconds": 40.0},
        "timeout_seconds": 9.0, "attempts": 4, "worker_id": "w", "result": {"r": 1},
        "error": "e", "progress": {"done": 1}, "created_at": T0, "updated_at": T1,
        "started_at": T0, "finished_at": T1, "run_at": T0, "created_by": "k",
        "idempotency_key": "i", "cancel_requested": True,
        "waiting_reason": "waiting on 1 unfinished dependency",
    }  # fmt: skip


def test_a_field_the_encoder_lacks_fails_the_check() -> None:
    """What the tests above rely on: a schema field the encoder does not write (even
    one with a default) makes the round trip differ."""

    class WiderJobRead(JobRead):
        queue: str | None = None

    with pytest.raises(AssertionError):
        assert_writes_schema(WiderJobRead, job_json(CASES[0]))


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


def test_a_new_jobs_row_has_the_insert_columns_in_order() -> None:
    """``job_row`` builds the values of a new job: the columns of ``INSERT_COLUMNS`` in
    their order, then the payload's JSON text; a batch's columns are the rows' wire
    forms (``wire_row``), however they are built."""
    from datetime import UTC, datetime
    from uuid import uuid4

    from shared.auth import Actor
    from shared.jobs.prepare import Prepared
    from shared.jobs.rows import job_row, wire_columns, wire_row
    from shared.jobs.sql import INSERT_COLUMNS
    from shared.jobs.transitions import as_columns
    from shared.schemas import JobCreate, Resources, RetryPolicy

    now = datetime.now(UTC)
    spec = JobCreate(type="demo.echo", payload={"a": 1})
    it = Prepared(
        id=uuid4(), spec=spec, task=None,  # type: ignore[arg-type]
        resources=Resources(cpu_units=0.5, memory_mb=64), retry=RetryPolicy(),
        timeout_seconds=None, fingerprint="", payload_json='{"a":1}',
    )  # fmt: skip
    row = job_row(it, status="ready", run_at=now, now=now, actor=Actor("k", "admin"),
                  dep_ids=[], unmet=0, error=None)  # fmt: skip
    assert list(row) == [*INSERT_COLUMNS, "payload_json"]
    assert row["payload_json"] == '{"a":1}'

    parents = [uuid4(), uuid4()]
    child = job_row(it, status="blocked", run_at=now, now=now, actor=Actor("k", "admin"),
                    dep_ids=parents, unmet=2, error=None)  # fmt: skip
    rows = [row, child]
    wire = [wire_row(r) for r in rows]
    assert wire_columns(rows) == as_columns(wire)
    assert list(wire_columns(rows)) == list(INSERT_COLUMNS)  # the statements take them in order
    assert wire[1]["depends_on"] == "{" + ",".join(map(str, parents)) + "}"
    assert wire[0]["payload"] == '{"a":1}'
