"""The API's outbox sends one wake-up hint per chunk, after the chunk's events
(``one_hint``): several requests' messages travel as one batch of events and one hint,
not as a message per item, and no event is lost or reordered."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from shared.bodies import batched, one_hint
from shared.jobs.events import submitted_event
from shared.messages import Batch, JobStateChanged, JobSubmitted, _Message, unpack


def request(i: int) -> list[_Message]:
    """What one ``POST /jobs`` publishes: its job's event, then its hint."""
    job = SimpleNamespace(id=uuid.uuid4(), type=f"t{i}", status="ready", error=None)
    return [submitted_event(job), JobSubmitted(job_id=job.id, type=job.type, priority="normal")]


def test_several_requests_travel_as_a_batch_of_events_and_one_hint() -> None:
    chunk = [m for i in range(5) for m in request(i)]
    assert len(batched(chunk)) == 10  # alternating kinds: no run to batch
    bodies = batched(one_hint(chunk))
    assert len(bodies) == 2
    events = [m for m in chunk if isinstance(m, JobStateChanged)]
    assert isinstance(bodies[0], Batch) and list(unpack(bodies[0])) == events
    assert bodies[1] == chunk[-1]  # the last request's hint


def test_a_chunk_with_no_hint_or_one_hint_last_is_left_as_it_is() -> None:
    events = [request(i)[0] for i in range(3)]
    assert one_hint(events) is events
    single = request(0)
    assert one_hint(single) is single
    assert one_hint([]) == []


def test_a_hint_ahead_of_events_goes_after_them() -> None:
    first, second = request(0), request(1)
    chunk = [first[1], first[0], second[0]]  # a hint, then two events
    assert one_hint(chunk) == [first[0], second[0], first[1]]
