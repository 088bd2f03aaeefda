"""``state_summaries``: what the API's counters read of a ``job.state`` body without
decoding it whole. It must give the fields ``decode`` gives, and refuse what ``decode``
would refuse in those fields (the caller then decodes the body whole)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from services.api.summaries import StateSummary, state_summaries
from shared.errors import DecodeError
from shared.messages import (
    Batch,
    JobCancel,
    JobStateChanged,
    decode,
    encode,
    unpack,
)

FIELDS = ("type", "old_status", "new_status", "wait_seconds", "duration_seconds")


def event(**overrides: object) -> JobStateChanged:
    values: dict[str, object] = {
        "job_id": uuid.uuid4(), "type": "demo.echo", "old_status": "running",
        "new_status": "completed", "attempt": 2, "worker_id": "w-1", "reason": "completed",
        "duration_seconds": 0.25,
    }  # fmt: skip
    values.update(overrides)
    return JobStateChanged(**values)  # type: ignore[arg-type]


EVENTS = [
    event(),
    event(old_status="ready", new_status="running", wait_seconds=1.5, duration_seconds=None),
    event(old_status=None, new_status="ready", duration_seconds=None),
    event(type="t\x00ype", new_status="failed"),  # bad text: replaced, as decode does
]


@pytest.mark.parametrize(
    "body", [encode(e) for e in EVENTS] + [encode(Batch(of="job.state", items=EVENTS))]
)
def test_the_summaries_hold_what_decode_gives(body: bytes) -> None:
    whole = unpack(decode(body))
    summaries = state_summaries(body)
    assert [{f: getattr(s, f) for f in FIELDS} for s in summaries] == [
        {f: getattr(e, f) for f in FIELDS} for e in whole
    ]


def _edited(e: JobStateChanged, **fields: object) -> dict[str, object]:
    raw = orjson.loads(encode(e))
    raw.update(fields)
    return raw  # type: ignore[no-any-return]


REFUSED = {
    "not JSON": b"{not json",
    "a batch of another kind": orjson.dumps(
        {"v": 1, "kind": "batch", "of": "job.logs", "items": [orjson.loads(encode(event()))]}
    ),
    "a type too long": orjson.dumps(_edited(event(), type="x" * 1001)),
    "no new status": orjson.dumps({k: v for k, v in _edited(event()).items() if k != "new_status"}),
    "a duration that is not finite": encode(event()).replace(b"0.25", b"1e999"),
    "a status that is a number": orjson.dumps(_edited(event(), old_status=7)),
    "another version": orjson.dumps(_edited(event(), v=2)),
    "one bad item in a batch": orjson.dumps(
        {
            "v": 1,
            "kind": "batch",
            "of": "job.state",
            "items": [orjson.loads(encode(event())), _edited(event(), type="x" * 1001)],
        }
    ),
    "an empty batch": orjson.dumps({"v": 1, "kind": "batch", "of": "job.state", "items": []}),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_what_decode_refuses_in_those_fields_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(body)
    with pytest.raises(DecodeError):
        state_summaries(body)


def test_a_body_of_another_kind_is_left_to_decode() -> None:
    body = encode(JobCancel(job_id=uuid.uuid4(), attempt=1))
    assert isinstance(decode(body), JobCancel)
    with pytest.raises(DecodeError):
        state_summaries(body)


def test_the_summary_checks_its_fields_as_the_event_does() -> None:
    """The summary re-declares the fields it reads: a constraint tightened on one and
    not the other would let the summary take what ``decode`` refuses."""
    summary, whole = StateSummary.model_fields, JobStateChanged.model_fields
    for name in (*FIELDS, "kind", "v"):
        assert summary[name].annotation == whole[name].annotation, name
        assert summary[name].metadata == whole[name].metadata, name


def test_the_fields_it_does_not_read_are_not_checked() -> None:
    """What the counters do not read is not checked either (docs/performance-history.md): a
    state event with a malformed id is counted from its summary, while a whole decode
    (a WebSocket client connected) refuses it."""
    raw = _edited(event(), job_id="not-a-uuid", attempt=-1)
    with pytest.raises(DecodeError):
        decode(orjson.dumps(raw))
    assert [s.type for s in state_summaries(orjson.dumps(raw))] == ["demo.echo"]
