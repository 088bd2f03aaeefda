"""The rows, events and answer of a plain batch: one whose jobs name no parent and carry
no idempotency key (``shared.jobs.submit.can_submit_batch_fast``).

Such jobs, once validated, differ from one another in their id, name and payload only,
given their type, priority, resources, retry policy, timeout and start. Each such
combination (a shape: usually one per batch) is built once, as a single job is built
(``rows.plain_row``, ``views.job_dict``, ``events.submitted_event``), and every job of it
is a copy with its own id, name and payload: under a third of the Python per job that
building each job whole takes (docs/performance.md). ``tests/integration/
test_batch_fast.py`` compares what comes out of here with the session path's rows,
answers and audit rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, NamedTuple
from uuid import UUID

from shared.auth import Actor
from shared.jobs import sql
from shared.jobs.events import submitted_event
from shared.jobs.prepare import Prepared
from shared.jobs.rows import plain_row, wire_row
from shared.jobs.views import JobTemplate, batch_of_json
from shared.messages import JobStateChanged
from shared.prechecked import prechecked_copies


class Created(NamedTuple):
    """A job the batch stores: what its announcement reads (the hint, the counters)."""

    id: UUID
    type: str
    status: str
    priority: int


class _Shape:
    """What the jobs of one shape share, built from the first of them."""

    __slots__ = ("announced", "answer", "event", "wire")

    def __init__(self, first: Prepared, *, actor: Actor, now: datetime) -> None:
        row = plain_row(first, now=now, actor=actor)
        job = SimpleNamespace(**sql.INSERT_DEFAULTS, **row)
        self.wire = wire_row(row)  # the insert's values, as they travel
        self.answer = JobTemplate(job)
        self.event = submitted_event(job, ts=now)
        self.announced = (job.type, job.status, job.priority)  # Created's, after its id


class PlainBatch:
    """The jobs (validated; no parent, no idempotency key) that ``actor`` submits at
    ``now``, added part by part in request order."""

    def __init__(self, *, actor: Actor, now: datetime) -> None:
        self.actor, self.now = actor, now
        self.items: list[Prepared] = []
        self._shapes: list[_Shape] = []  # each job's, in request order
        self._by_key: dict[tuple[Any, ...], _Shape] = {}

    def add(self, items: Sequence[Prepared]) -> range:
        """Add the next jobs (``rows.is_plain``: ``submit_batch_fast`` checked them);
        where they are in the batch."""
        start = len(self.items)
        for it in items:
            spec = it.spec
            # Every value ``plain_row`` and ``job_dict`` take from the job but its id,
            # name and payload (the resources' and retry policy's fields by value).
            key = (
                spec.type, spec.priority, *it.resources.__dict__.values(),
                *it.retry.__dict__.values(), it.timeout_seconds, spec.run_at,
            )  # fmt: skip
            shape = self._by_key.get(key)
            if shape is None:
                shape = self._by_key[key] = _Shape(it, actor=self.actor, now=self.now)
            self._shapes.append(shape)
        self.items.extend(items)
        return range(start, len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[UUID]:
        return [it.id for it in self.items]

    def columns(self, part: range) -> dict[str, list[Any]]:
        """The insert's values of the jobs at ``part``, one list per column
        (``sql.INSERT_COLUMNS``)."""
        items = self.items[part.start : part.stop]
        shapes = self._shapes[part.start : part.stop]
        own: dict[str, list[Any]] = {
            "id": [it.id for it in items],
            "name": [it.spec.name for it in items],
            "payload": [it.payload_json for it in items],  # as it travels: JSON text
        }
        first = shapes[0].wire
        one_shape = len(self._by_key) == 1
        columns: dict[str, list[Any]] = {}
        for name in first:
            if name in own:
                columns[name] = own[name]
            elif one_shape:
                columns[name] = [first[name]] * len(items)
            else:
                columns[name] = [shape.wire[name] for shape in shapes]
        return columns

    def events(self, part: range) -> list[JobStateChanged]:
        """The ``job.state`` event (None -> its first status) of each job at ``part``."""
        items = self.items[part.start : part.stop]
        if len(self._by_key) == 1:
            return prechecked_copies(self._shapes[0].event, "job_id", [it.id for it in items])
        return [
            prechecked_copies(shape.event, "job_id", [it.id])[0]
            for it, shape in zip(items, self._shapes[part.start : part.stop], strict=True)
        ]

    def answer(self) -> bytes:
        """``BatchRead``: the jobs as ``views.job_json`` writes them, in request order."""
        return batch_of_json([
            shape.answer.json(it.id, it.spec.name, it.payload_json.encode())
            for it, shape in zip(self.items, self._shapes, strict=True)
        ])  # fmt: skip

    def created(self) -> list[Created]:
        return [
            Created(it.id, *shape.announced)
            for it, shape in zip(self.items, self._shapes, strict=True)
        ]
