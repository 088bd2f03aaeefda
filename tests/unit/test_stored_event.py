"""The events of the hot paths are built without validation (``stored_event``): they
must be exactly what the validated ``state_event`` builds, on the wire and decoded."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from asyncpg.pgproto.pgproto import UUID as DatabaseUUID

from shared.jobs.events import state_event, stored_event, submitted_event
from shared.messages import JobStateChanged, decode, encode
from shared.states import InvalidTransition

CASES = [
    ("ready", "running", "dispatched", {"worker_id": "w-1", "wait_seconds": 0.25}),
    ("running", "completed", "completed", {"worker_id": "w-1", "duration_seconds": 1.5}),
    ("running", "completed", "completed", {"worker_id": "w-1", "duration_seconds": None}),
    ("blocked", "ready", "dependencies completed", {"worker_id": None}),
    ("blocked", "pending", "dependencies completed", {"worker_id": None}),
    (None, "ready", "submitted", {"worker_id": None}),
    (None, "failed", "dependency 5f0c… failed", {"worker_id": None}),
]


@pytest.mark.parametrize("id_type", [uuid.UUID, DatabaseUUID], ids=["uuid", "asyncpg"])
@pytest.mark.parametrize(("old", "new", "reason", "extra"), CASES)
def test_a_stored_event_is_the_validated_event(
    old: str, new: str, reason: str, extra: dict[str, object], id_type: type
) -> None:
    # The database's rows carry asyncpg's own UUID type: the same bytes either way.
    job_id = id_type(str(uuid.uuid4()))
    fast = stored_event(job_id, "demo.echo", 3, old, new, reason, **extra)  # type: ignore[arg-type]
    checked = state_event(job_id, "demo.echo", 3, old, new, reason, ts=fast.ts, **extra)  # type: ignore[arg-type]
    assert encode(fast) == encode(checked)
    assert decode(encode(fast)) == checked
    assert fast.model_dump() == JobStateChanged.model_validate(fast.model_dump()).model_dump()


def test_a_stored_event_still_refuses_a_transition_the_state_machine_does_not_allow() -> None:
    with pytest.raises(InvalidTransition):
        stored_event(uuid.uuid4(), "t", 1, "completed", "running", "dispatched", worker_id="w")


@pytest.mark.parametrize(
    ("status", "error"), [("ready", None), ("blocked", None), ("failed", "dependency x failed")]
)
def test_a_submitted_event_is_the_validated_event(status: str, error: str | None) -> None:
    job = SimpleNamespace(id=uuid.uuid4(), type="demo.echo", status=status, error=error)
    fast = submitted_event(job)
    checked = state_event(job.id, job.type, 0, None, status, error or "submitted", ts=fast.ts)
    assert encode(fast) == encode(checked)
    assert decode(encode(fast)) == checked
