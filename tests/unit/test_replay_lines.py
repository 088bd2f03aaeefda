"""An API replica remembers every job's recent log lines for replay, as they came, and
makes them envelopes only when a client asks: what a replay gives is what a client
connected at the time received, line for line."""

from __future__ import annotations

import sys
import uuid

from services.api import stream
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


def test_what_a_replica_keeps_for_replay_is_bounded_in_bytes() -> None:
    """Seen failing with count bounds only: 4 jobs of 2,000 lines of 64 Ki characters
    past U+FFFF were kept whole (~2 GiB), and every replica keeps every job's lines."""
    hub = EventHub(broker=None, buffer_size=100)  # type: ignore[arg-type]
    text = "\U0001f600" * 65_536  # 256 KiB as Python keeps it; one string shared by all
    jobs = [uuid.uuid4() for _ in range(40)]
    for job in jobs:
        for seq in range(100):
            hub.publish_local(JobLog(job_id=job, type="demo.log", attempt=1, seq=seq,
                                     level="info", message=text))  # fmt: skip
    kept = [hub.recent_lines(job) for job in jobs]
    per_job = [sum(sys.getsizeof(e["data"]["message"]) for e in k) for k in kept]
    assert max(per_job) <= stream.RECENT_BYTES_PER_JOB
    assert sum(per_job) <= stream.RECENT_BYTES
    # What is kept is each job's newest lines, and the most recently active jobs'.
    assert kept[-1] and [e["data"]["seq"] for e in kept[-1]][-1] == 99
    assert kept[0] == []


def test_a_slow_clients_buffer_is_bounded_in_bytes() -> None:
    hub = EventHub(broker=None, buffer_size=1_000)  # type: ignore[arg-type]
    job = uuid.uuid4()
    client = hub.subscribe(StreamFilter(job_ids=frozenset({job})))
    for seq in range(1_000):
        hub.publish_local(JobLog(job_id=job, type="demo.log", attempt=1, seq=seq,
                                 level="info", message="x" * 65_536))  # fmt: skip
    assert sum(len(body) for _, body in client.buffer) <= stream.SUBSCRIBER_BYTES
    assert client.dropped > 0 and len(client.buffer) < 1_000
