from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_result_is_plain_json_where_the_report_is_built() -> None:
    """Non-string keys and objects of a task's own are refused at construction (the
    worker turns a result into plain JSON first, and fails the attempt if it cannot)."""
    with pytest.raises(ValueError, match="not a string"):
        _report({1: "int key"})
    with pytest.raises(ValueError, match="is not JSON"):
        _report({"when": datetime(2026, 1, 1, tzinfo=UTC)})


def _report(result: object) -> JobStatusReport:
    return JobStatusReport(job_id=JOB, attempt=1, worker_id="w1", status="completed", result=result)


@pytest.mark.parametrize(
    "message",
    [
        *SAMPLES,
        Batch(of="job.state", items=[SAMPLES[4], SAMPLES[4]]),
        Batch(of="job.dispatch", items=[SAMPLES[1], SAMPLES[1]]),
        JobStateChanged(job_id=JOB, type="t", old_status="running", new_status="failed",
                        attempt=3, duration_seconds=1.5,
                        ts=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))),
        _report({"tuple": (1, 2), "float": 1e-300, "unicode": "\u00fc\U0001f600"}),
    ],
    ids=lambda m: getattr(m, "kind", "?"),
)  # fmt: skip
def test_encode_writes_what_pydantic_writes(message: Any) -> None:
    """encode() lets orjson walk the models (3-4x faster); its bytes must be pydantic's."""
    assert encode(message) == pydantic_encode(message)


# ---------------------------------------------------------------- ranges on the wire
# Every number a message carries fits the column or encoder that takes it (int4 for
# attempts, sequence numbers and sizes; finite floats; results and payloads that orjson
# writes and jsonb stores); text is valid UTF-8 of bounded size. Anything else is a
# DecodeError at the receiver, before any effect (issue 17, item 3).

INT4_OVERFLOW = 2**31


def _wire(message: Any, **changes: Any) -> bytes:
    """``message``'s body with some fields replaced by values a hostile sender may write
    (the stdlib writes NaN, huge integers and lone surrogates as they are)."""
    import json

    body = json.loads(encode(message))
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p) if p.isdigit() else p]
        target[last] = value
    return json.dumps(body).encode()


REPORT = JobStatusReport(job_id=JOB, attempt=1, worker_id="w1", status="completed", result={})
BEAT = SAMPLES[7]
LOG = SAMPLES[6]


@pytest.mark.parametrize(
    ("message", "changes"),
    [
        (REPORT, {"attempt": INT4_OVERFLOW}),
        (REPORT, {"attempt": -1}),
        (REPORT, {"result": 2**64}),
        (REPORT, {"result": {"deep": [1, -(2**63) - 1]}}),
        (REPORT, {"error": "e" * 1_000_000}),
        (BEAT, {"capacity__memory_mb": INT4_OVERFLOW}),
        (BEAT, {"allocated__slots": INT4_OVERFLOW}),
        (BEAT, {"capacity__cpu_units": float("inf")}),
        (BEAT, {"cpu_percent": float("nan")}),
        (LOG, {"seq": INT4_OVERFLOW}),
        (SAMPLES[5], {"done": float("nan")}),
        (SAMPLES[1], {"resources__memory_mb": INT4_OVERFLOW}),
        (LOG, {"ts": "9999-12-31T23:59:59-05:00"}),
        # A worker id no routing key can hold (seen failing: a heartbeat of 300 x's
        # joined a worker whose dispatches could not be published).
        (BEAT, {"worker_id": "x" * 300}),
        (BEAT, {"worker_id": "a.b"}),
        (BEAT, {"worker_id": ""}),
        (REPORT, {"worker_id": "x" * 101}),
    ],
    ids=lambda v: getattr(v, "kind", None) or str(v)[:40],
)  # fmt: skip
def test_values_no_column_or_encoder_can_take_are_decode_errors(
    message: Any, changes: dict[str, Any]
) -> None:
    with pytest.raises(DecodeError):
        decode(_wire(message, **changes))


@pytest.mark.parametrize("result", [float("nan"), {"x": float("inf")}, [1, float("-inf")]])
def test_a_non_finite_number_is_refused_by_the_range_check(result: Any) -> None:
    """The stdlib writes NaN and Infinity as bare words, which the parser takes: the
    refusal must come from the value check (and the same check refuses a model built
    in Python, where no parser is involved)."""
    with pytest.raises(DecodeError, match="not a valid JSON number"):
        decode(_wire(REPORT, result=result))
    with pytest.raises(ValueError, match="not a valid JSON number"):
        _report(result)


def test_a_result_is_measured_exactly_not_estimated() -> None:
    """600 KB of integers is well under MAX_RESULT_BYTES: the report takes it, and the
    worker's check (which must agree) too; one byte over the limit is refused by both."""
    from services.worker.runner import storable_result
    from shared.messages import MAX_RESULT_BYTES

    many = [0] * 300_000  # 600,001 bytes encoded
    assert decode(encode(_report(many))).result == many  # type: ignore[union-attr]
    assert storable_result(many).ok
    over = "x" * (MAX_RESULT_BYTES - 1)  # two quotes: one byte over
    with pytest.raises(ValueError, match=f"{MAX_RESULT_BYTES + 1:,} bytes"):
        _report(over)
    assert not storable_result(over).ok


def test_a_payload_the_api_takes_at_its_largest_settings_is_dispatchable() -> None:
    """The API's limits may be raised up to the message schema's, no further: a payload
    at those limits must still fit a dispatch (same depth count, same integers)."""
    from shared.jsonvalues import CLIENT_INT_MAX, CLIENT_INT_MIN, MAX_JSON_DEPTH
    from shared.schemas import check_json_value

    deep: Any = {"n": [CLIENT_INT_MIN, CLIENT_INT_MAX]}
    for _ in range(MAX_JSON_DEPTH - 2):
        deep = {"d": deep}
    check_json_value(deep, max_depth=MAX_JSON_DEPTH)
    dispatch = SAMPLES[1].model_copy(update={"payload": deep})
    assert decode(encode(dispatch)) == dispatch
    with pytest.raises(ValueError, match="deeper than"):
        check_json_value({"d": deep}, max_depth=MAX_JSON_DEPTH)


def test_nesting_beyond_the_limit_is_a_decode_error() -> None:
    from shared.jsonvalues import MAX_JSON_DEPTH

    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DecodeError, match="deep"):
        decode(_wire(REPORT, result=deep))
    shallow: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        shallow = [shallow]
    assert decode(_wire(REPORT, result=shallow)).result == shallow  # type: ignore[union-attr]


def test_text_a_task_wrote_is_made_safe_where_the_message_is_built() -> None:
    """Lone surrogates (a file name from os.listdir) and NUL become U+FFFD: orjson and
    PostgreSQL can take the message, and a reader sees where the text was bad."""
    line = JobLog(job_id=JOB, attempt=1, seq=1, level="info", message="file \udcff\x00.txt")
    assert line.message == "file \ufffd\ufffd.txt"
    report = JobStatusReport(
        job_id=JOB, attempt=1, worker_id="w1", status="failed",
        error="OSError: \ud800", traceback="tb \udfff", result={"k\udc80": ["v\ud801"]},
    )  # fmt: skip
    assert (report.error, report.traceback) == ("OSError: \ufffd", "tb \ufffd")
    assert report.result == {"k\ufffd": ["v\ufffd"]}
    assert decode(encode(report)) == report


def test_a_batch_keeps_its_good_items_and_names_each_bad_one() -> None:
    from shared.messages import decode_each

    good = [
        JobStatusReport(job_id=uuid.uuid4(), attempt=1, worker_id="w1", status="started")
        for _ in range(3)
    ]
    body = _wire(Batch(of="job.status", items=good), items__1__attempt=INT4_OVERFLOW)
    with pytest.raises(DecodeError):
        decode(body)
    message, rejected = decode_each(body)
    assert isinstance(message, Batch)
    assert [m.job_id for m in message.items] == [good[0].job_id, good[2].job_id]
    assert len(rejected) == 1
    assert "attempt" in rejected[0].reason
    assert str(good[1].job_id) in rejected[0].body.decode()


GOOD_BATCH = Batch(
    of="job.status",
    items=[
        JobStatusReport(job_id=uuid.uuid4(), attempt=1, worker_id="w1", status="started")
        for _ in range(3)
    ],
)


@pytest.mark.parametrize(
    "ts", ["x", "", "1960-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00", 10**30, -(10**30),
           1e300, None, [], {}],
)  # fmt: skip
@pytest.mark.parametrize("bad_item", [False, True])
def test_a_batch_with_a_bad_ts_is_rejected_whole_never_raised(ts: Any, bad_item: bool) -> None:
    """An envelope the schema refuses rejects the whole body with its reason: the
    receiver dead-letters it and settles the delivery (an exception here would leave
    it unsettled, holding a prefetch slot for good)."""
    from shared.messages import decode_each

    changes: dict[str, Any] = {"ts": ts}
    if bad_item:  # a bad item too: the path that rebuilds the batch from its good items
        changes["items__1__attempt"] = INT4_OVERFLOW
    body = _wire(GOOD_BATCH, **changes)
    message, rejected = decode_each(body)
    assert message is None
    assert [r.body for r in rejected] == [body]
    assert "ts" in rejected[0].reason


ENVELOPE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(
    v=st.one_of(st.just(1), ENVELOPE_VALUES),
    of=st.one_of(st.sampled_from(["job.status", "job.logs", "job.state", "job.dispatch"]),
                 ENVELOPE_VALUES),
    ts=ENVELOPE_VALUES,
    extra_item=ENVELOPE_VALUES,
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_decode_each_never_raises_whatever_the_envelope(
    v: Any, of: Any, ts: Any, extra_item: Any
) -> None:
    import json

    from shared.messages import decode_each

    raw = json.loads(encode(GOOD_BATCH))
    raw.update(v=v, of=of, ts=ts)
    raw["items"].append(extra_item)
    body = json.dumps(raw).encode()
    message, rejected = decode_each(body)
    assert message is not None or rejected


def test_an_undecodable_body_is_rejected_whole() -> None:
    from shared.messages import decode_each

    message, rejected = decode_each(b"not json")
    assert message is None
    assert [r.body for r in rejected] == [b"not json"]


# ---------------------------------------------------------------- the lease is a duration


def test_a_dispatch_carries_its_lease_as_a_duration_of_the_senders_clock() -> None:
    """A scheduler whose clock is an hour behind the worker's (or ahead) still gives it
    the whole lease: the worker never compares its clock with the scheduler's."""
    sent = datetime.now(UTC) - timedelta(hours=1)
    dispatch = JobDispatch(
        job_id=JOB, attempt=1, type="demo.echo", payload={},
        resources=ResourceSpec(cpu_units=1, memory_mb=1), timeout_seconds=None,
        ts=sent, lease_expires_at=sent + timedelta(seconds=10),
    )  # fmt: skip
    assert dispatch.lease_seconds == pytest.approx(10)
    # A body from before the field existed (schema v1 without it) gets the same.
    import json

    body = json.loads(encode(dispatch))
    del body["lease_seconds"]
    old = decode(json.dumps(body).encode())
    assert old.lease_seconds == pytest.approx(10)  # type: ignore[union-attr]


def test_asyncpg_uuids_are_written_by_orjson_as_pydantic_would() -> None:
    """The scheduler's ids come from asyncpg as its own UUID type: orjson must write them
    itself (the pydantic fallback cost ~7 % of the scheduler's CPU)."""
    import uuid

    from asyncpg.pgproto import pgproto

    from shared.messages import JobCancel, _fields, encode, pydantic_encode

    message = JobCancel(job_id=pgproto.UUID(str(uuid.uuid4())), attempt=1)
    assert encode(message) == pydantic_encode(message)
    assert _fields(message.job_id) == str(message.job_id)
