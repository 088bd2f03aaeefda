"""Batches: several messages of one kind in one body, routed like their items."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.bodies import batched, dispatches_for
from shared.errors import DecodeError
from shared.messages import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    Batch,
    JobCancel,
    JobDispatch,
    JobLog,
    JobStatusReport,
    ResourceSpec,
    decode,
    encode,
    routing_key,
    unpack,
)


def line(seq: int) -> JobLog:
    return JobLog(job_id=uuid.uuid4(), attempt=1, seq=seq, level="info", message=f"l{seq}")


def report(status: str = "completed") -> JobStatusReport:
    return JobStatusReport(job_id=uuid.uuid4(), attempt=1, worker_id="w1", status=status)  # type: ignore[arg-type]


def dispatch() -> JobDispatch:
    return JobDispatch(
        job_id=uuid.uuid4(), attempt=1, type="demo.echo", payload={},
        resources=ResourceSpec(cpu_units=0.1, memory_mb=16), timeout_seconds=None,
        lease_expires_at=datetime.now(UTC),
    )  # fmt: skip


def test_runs_of_one_kind_become_batches_in_order() -> None:
    a, b, c = line(1), line(2), line(3)
    r1, r2 = report("started"), report()
    cancel = JobCancel(job_id=uuid.uuid4(), attempt=1)
    out = batched([a, b, r1, r2, cancel, c])
    assert [type(m).__name__ for m in out] == ["Batch", "Batch", "JobCancel", "JobLog"]
    assert unpack(out[0]) == [a, b] and unpack(out[1]) == [r1, r2]  # type: ignore[arg-type]
    assert out[2] is cancel and out[3] is c  # singles stay plain, routed as design.md says
    flat = [m for msg in out for m in unpack(msg)]  # type: ignore[arg-type]
    assert flat == [a, b, r1, r2, cancel, c]


def test_batches_are_capped_and_round_trip() -> None:
    lines = [line(i) for i in range(MAX_BATCH_ITEMS + 3)]
    out = batched(lines)  # type: ignore[arg-type]
    assert [len(unpack(m)) for m in out] == [MAX_BATCH_ITEMS, 3]  # type: ignore[arg-type]
    decoded = decode(encode(out[1]))
    assert isinstance(decoded, Batch) and decoded.of == "job.logs"
    assert unpack(decoded) == lines[-3:]
    assert routing_key(out[0]) == "job.logs.batch"
    assert routing_key(Batch(of="job.status", items=[report(), report()])) == "job.status.batch"


def test_dispatches_batch_per_worker_with_the_worker_in_the_key() -> None:
    one = dispatch()
    assert dispatches_for("w1", [one]) == [(one, f"job.dispatch.w1.{one.job_id}")]
    many = [dispatch() for _ in range(MAX_BATCH_ITEMS + 1)]
    out = dispatches_for("w1", many)
    # A remainder of one goes as the plain dispatch.
    assert [key for _, key in out] == [
        "job.dispatch.w1.batch",
        f"job.dispatch.w1.{many[-1].job_id}",
    ]
    assert [m for msg, _ in out for m in unpack(msg)] == many  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="worker id"):
        routing_key(out[0][0])


def test_a_batch_holds_one_kind_and_at_least_one_item() -> None:
    with pytest.raises(ValueError, match=r"holds job\.status"):
        Batch(of="job.logs", items=[line(1), report()])
    body = encode(Batch(of="job.logs", items=[line(1)])).replace(
        b'"of":"job.logs"', b'"of":"job.x"'
    )
    with pytest.raises(DecodeError):
        decode(body)
    with pytest.raises(DecodeError):
        decode(b'{"v":1,"kind":"batch","of":"job.logs","items":[]}')


def test_batches_are_capped_by_size_too() -> None:
    big = "x" * (MAX_BATCH_BYTES // 3)
    reports = [
        JobStatusReport(
            job_id=uuid.uuid4(), attempt=1, worker_id="w1", status="completed", result={"r": big}
        )
        for _ in range(7)
    ]
    out = batched(reports)  # type: ignore[arg-type]
    assert [len(unpack(m)) for m in out] == [2, 2, 2, 1]  # the last one alone: plain
    assert all(len(encode(m)) < MAX_BATCH_BYTES for m in out)
    assert [r for m in out for r in unpack(m)] == reports  # type: ignore[arg-type]


def test_the_batches_a_sender_builds_are_what_validation_builds() -> None:
    """``batched`` and ``dispatches_for`` build their batches without checking them again:
    each is the ``Batch`` that validating the same values builds, body included."""
    messages = [line(i) for i in range(3)] + [report(), report()]
    built = batched(messages) + [b for b, _ in dispatches_for("w1", [dispatch(), dispatch()])]
    assert [type(b) for b in built] == [Batch, Batch, Batch]
    for body in built:
        assert isinstance(body, Batch)
        checked = Batch(of=body.of, items=body.items, ts=body.ts)
        assert body == checked and encode(body) == encode(checked)
        assert body.model_fields_set == checked.model_fields_set
        assert decode(encode(body)) == checked
