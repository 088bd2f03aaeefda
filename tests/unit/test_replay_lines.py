"""An API replica remembers every job's recent log lines for replay, as they came, and
makes them envelopes only when a client asks: what a replay gives is what a client
connected at the time received, line for line."""

from __future__ import annotations

import uuid

from services.api.stream import EventHub, StreamFilter
from shared.messages import Batch, JobLog, decode_each, encode


def lines(job: uuid.UUID, n: int) -> list[JobLog]:
    return [
        JobLog(job_id=job, type="demo.log", attempt=1, seq=i, level="info", message=f"line {i}")
        for i in range(n)
    ]


def test_a_replay_gives_the_envelopes_a_connected_client_received() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    body = encode(Batch(of="job.logs", items=[*lines(a, 3), *lines(b, 2)]))
    decoded, rejected = decode_each(body)
    assert decoded is not None and not rejected

    watched = EventHub(broker=None, buffer_size=100)  # type: ignore[arg-type]
    client = watched.subscribe(StreamFilter(job_ids=frozenset({a})))
    alone = EventHub(broker=None, buffer_size=100)  # type: ignore[arg-type]
    for line in decoded.items:  # type: ignore[union-attr]
        watched.publish_local(line)
        alone.publish_local(line)

    received = [event for event, _ in client.buffer]
    assert [e["data"]["seq"] for e in received] == [0, 1, 2]
    assert alone.recent_lines(a) == received == watched.recent_lines(a)
    assert [e["job_id"] for e in alone.recent_lines(b)] == [str(b)] * 2
    assert alone.recent_lines(uuid.uuid4()) == []
