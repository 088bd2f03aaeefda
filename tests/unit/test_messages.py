from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, field_serializer

from shared.errors import DecodeError
from shared.messages import (
    Batch,
    JobCancel,
    JobDispatch,
    JobLog,
    JobProgress,
    JobStateChanged,
    JobStatusReport,
    JobSubmitted,
    MonitoringQueue,
    MonitoringResource,
    ResourceSpec,
    WorkerCapacity,
    WorkerHeartbeat,
    decode,
    dispatch_key,
    encode,
    pydantic_encode,
    routing_key,
)

JOB = uuid.uuid4()
CAP = WorkerCapacity(cpu_units=2, memory_mb=1024, slots=4)
SAMPLES = [
    JobSubmitted(job_id=JOB, type="demo.echo", priority="high"),
    JobDispatch(
        job_id=JOB,
        attempt=2,
        type="demo.echo",
        payload={"a": [1, 2]},
        resources=ResourceSpec(cpu_units=0.5, memory_mb=64),
        timeout_seconds=3.5,
        lease_expires_at=datetime.now(UTC),
    ),
    JobCancel(job_id=JOB, attempt=1),
    JobStatusReport(job_id=JOB, attempt=1, worker_id="w1", status="completed", result={"x": 1}),
    JobStateChanged(job_id=JOB, type="t", old_status=None, new_status="ready", attempt=0),
    JobProgress(job_id=JOB, attempt=1, done=3, total=10, message="3/10"),
    JobLog(job_id=JOB, attempt=1, seq=7, level="info", message="hello"),
    WorkerHeartbeat(worker_id="w1", capacity=CAP, allocated=CAP, task_types=["demo.echo"]),
    MonitoringQueue(by_status={"ready": 3}, by_priority={"high": 1}),
    MonitoringResource(workers_alive=1, capacity=CAP, allocated=CAP),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind)
def test_roundtrip(message: object) -> None:
    decoded = decode(encode(message))  # type: ignore[arg-type]
    assert decoded == message
    assert type(decoded) is type(message)


def test_routing_keys() -> None:
    assert routing_key(SAMPLES[0]) == f"job.submitted.{JOB}"
    assert routing_key(SAMPLES[2]) == f"job.cancel.{JOB}"
    assert routing_key(SAMPLES[3]) == f"job.status.{JOB}"
    assert routing_key(SAMPLES[4]) == f"job.state.{JOB}"
    assert routing_key(SAMPLES[5]) == f"job.progress.{JOB}"
    assert routing_key(SAMPLES[6]) == f"job.logs.{JOB}"
    assert routing_key(SAMPLES[7]) == "worker.heartbeat.w1"
    assert routing_key(SAMPLES[8]) == "job.monitoring.queue"
    assert routing_key(SAMPLES[9]) == "job.monitoring.resource"
    assert dispatch_key("w1", JOB) == f"job.dispatch.w1.{JOB}"
    with pytest.raises(ValueError, match="worker id"):
        routing_key(SAMPLES[1])


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"kind": "job.nope"}', b'{"kind": "job.cancel", "v": 1}',
     b'{"kind": "job.cancel", "v": 2, "job_id": "00000000-0000-0000-0000-000000000000", "attempt": 1}'],
)  # fmt: skip
def test_garbage_raises_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(body)


def test_version_is_on_the_wire() -> None:
    assert b'"v":1' in encode(SAMPLES[2])


class _Foreign(BaseModel):
    """A model of a task's own in a result: pydantic, not orjson, must write it."""

    when: datetime

    @field_serializer("when")
    def _epoch(self, when: datetime) -> float:
        return when.timestamp()


def _report(result: object) -> JobStatusReport:
    return JobStatusReport(job_id=JOB, attempt=1, worker_id="w1", status="completed", result=result)


@pytest.mark.parametrize(
    "message",
    [
        *SAMPLES,
        Batch(of="job.state", items=[SAMPLES[4], SAMPLES[4]]),
        Batch(of="job.dispatch", items=[SAMPLES[1], SAMPLES[1]]),
        JobStateChanged(job_id=JOB, type="t", old_status="running", new_status="failed",
                        attempt=3, duration_seconds=float("nan"),
                        ts=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))),
        _report({1: "int key", "nested": [{2: 3}]}),  # non-str keys
        _report({"model": _Foreign(when=datetime(2026, 1, 1, tzinfo=UTC))}),
        _report({"tuple": (1, 2), "float": 1e-300, "unicode": "\u00fc\U0001f600"}),
    ],
    ids=lambda m: getattr(m, "kind", "?"),
)  # fmt: skip
def test_encode_writes_what_pydantic_writes(message: Any) -> None:
    """encode() lets orjson walk the models (3-4x faster); its bytes must be pydantic's."""
    assert encode(message) == pydantic_encode(message)
