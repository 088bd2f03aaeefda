"""How a sender groups its messages into bodies (docs/architecture.md, "Batches"): runs
of one kind become ``Batch`` bodies bounded in items and bytes (``batched``,
``dispatches_for``), a short attempt's start report rides in its end report
(``fold_starts``), a worker's messages of one kind go together (``kinds_together``),
and a chunk's wake-up hints are sent as one (``one_hint``). What a body is and how it
is read stay in ``shared.messages``."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from shared.messages import (
    BATCHABLE,
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    Batch,
    JobDispatch,
    JobStatusReport,
    JobSubmitted,
    _Message,
    dispatch_key,
    utcnow,
)
from shared.prechecked import prechecked

_TEXT_FIELDS = ("message", "error", "traceback", "reason")
_JSON_FIELDS = ("result", "payload")
_FREE_FORM: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def approx_size(message: Any) -> int:
    """About how many bytes ``message`` takes encoded (its free-form parts counted)."""
    cls = type(message)
    fields = _FREE_FORM.get(cls)
    if fields is None:  # once per class: reading a field a model lacks is slow
        names = getattr(cls, "model_fields", {})
        fields = _FREE_FORM[cls] = (
            tuple(f for f in _TEXT_FIELDS if f in names),
            tuple(f for f in _JSON_FIELDS if f in names),
        )
    n = 300
    for name in fields[0]:
        value = getattr(message, name)
        if isinstance(value, str):
            n += len(value)
    for name in fields[1]:
        value = getattr(message, name)
        if value is not None:
            try:
                n += len(orjson.dumps(value))
            except TypeError:  # built without validation (a bug): let it travel alone
                n += MAX_BATCH_BYTES
    return n


def _chunks(messages: list[Any]) -> list[list[Any]]:
    """Consecutive runs of at most MAX_BATCH_ITEMS items and about MAX_BATCH_BYTES."""
    out: list[list[Any]] = []
    run: list[Any] = []
    size = 0
    for m in messages:
        n = approx_size(m)
        if run and (len(run) >= MAX_BATCH_ITEMS or size + n > MAX_BATCH_BYTES):
            out.append(run)
            run, size = [], 0
        run.append(m)
        size += n
    if run:
        out.append(run)
    return out


def _batch(of: str, chunk: list[Any]) -> Batch:
    """A ``Batch`` of one ``_chunks`` chunk of messages of kind ``of`` (built messages):
    what ``Batch(of=of, items=chunk)`` builds, without checking again what the chunk
    is by construction (0.7 ms for 2,000 state events, per body of every service)."""
    return prechecked(Batch, ts=utcnow(), of=of, items=chunk)


def batched(messages: list[_Message]) -> list[_Message]:
    """Runs of consecutive same-kind batchable messages become batches (order kept);
    a run of one stays a plain message, routed as design.md gives it."""
    out: list[_Message] = []
    run: list[_Message] = []

    def close() -> None:
        for chunk in _chunks(run):
            if len(chunk) == 1:
                out.append(chunk[0])
            else:
                out.append(_batch(chunk[0].kind, chunk))
        run.clear()

    for m in messages:
        kind = getattr(m, "kind", None)
        if kind not in BATCHABLE or kind == "job.dispatch":
            close()
            out.append(m)
            continue
        if run and run[0].kind != kind:  # type: ignore[attr-defined]
            close()
        run.append(m)
    close()
    return out


def kinds_together(messages: list[_Message]) -> list[_Message]:
    """``messages`` reordered so that each kind's messages come together, for
    ``batched`` to send each kind in as few bodies as it can: a worker's chunk of
    jobs that each logged a line and ended is [log, end, log, end, ...], one body per
    message as it stands, two bodies this way. Only messages of a job move, and never
    past one of the same job (each job's log lines, progress and reports keep their
    order); a message of no job (a heartbeat, which lists the jobs a worker runs) stays
    where it is, and nothing moves past it."""
    groups: list[list[_Message]] = []
    latest_of_kind: dict[str, int] = {}  # kind -> its last group since the last barrier
    group_of_job: dict[Any, int] = {}  # job -> the group of its latest message
    for m in messages:
        job = getattr(m, "job_id", None)
        if job is None:
            groups.append([m])
            latest_of_kind.clear()
            group_of_job.clear()
            continue
        kind: str = m.kind  # type: ignore[attr-defined]
        g = latest_of_kind.get(kind)
        if g is None or g < group_of_job.get(job, -1):
            g = latest_of_kind[kind] = len(groups)
            groups.append([])
        groups[g].append(m)
        group_of_job[job] = g
    return [m for group in groups for m in group]


def compact_worker_chunk(messages: list[_Message]) -> list[_Message]:
    """What a worker's outbox sends of a chunk: short attempts' starts folded into their
    ends, then each kind together."""
    return kinds_together(fold_starts(messages))


def fold_starts(messages: list[_Message]) -> list[_Message]:
    """``messages`` with each start report that an end report of the same attempt
    follows left out, its time carried by that end report (``started_at``): a short
    attempt's start and end, sent together anyway, become one report, so each receiver
    decodes and stores one. Everything else keeps its place and order."""
    last_end: dict[tuple[UUID, int, str], int] = {}
    for i, m in enumerate(messages):
        if type(m) is JobStatusReport and m.status != "started" and m.started_at is None:
            last_end[(m.job_id, m.attempt, m.worker_id)] = i
    if not last_end:
        return messages
    starts: dict[tuple[UUID, int, str], datetime] = {}
    out: list[_Message] = []
    for i, m in enumerate(messages):
        if type(m) is JobStatusReport:
            key = (m.job_id, m.attempt, m.worker_id)
            if m.status == "started":
                if i < last_end.get(key, -1):  # an end of its attempt comes after it
                    starts.setdefault(key, m.ts)
                    continue
            elif key in starts and m.started_at is None:
                m = m.model_copy(update={"started_at": starts.pop(key)})
        out.append(m)
    return out


def one_hint(messages: list[_Message]) -> list[_Message]:
    """``messages`` with their ``job.submitted`` hints made one, the last, sent after
    the rest: a hint only tells the scheduler to look at the database now, and one says
    that for a chunk as well as many. The other messages keep their order, so a chunk
    of several requests' messages (an event and a hint each) travels as one batch of
    events and one hint, and every event still goes before the hint of its request."""
    hints = [m for m in messages if type(m) is JobSubmitted]
    if not hints or (len(hints) == 1 and messages[-1] is hints[0]):
        return messages
    return [m for m in messages if type(m) is not JobSubmitted] + hints[-1:]


def dispatches_for(worker_id: str, dispatches: list[JobDispatch]) -> list[tuple[_Message, str]]:
    """One worker's dispatches as messages with their routing keys: batches of up to
    MAX_BATCH_ITEMS, or the plain dispatch when there is one."""
    out: list[tuple[_Message, str]] = []
    for chunk in _chunks(dispatches):
        if len(chunk) == 1:
            out.append((chunk[0], dispatch_key(worker_id, chunk[0].job_id)))
        else:
            out.append((_batch("job.dispatch", chunk), dispatch_key(worker_id, None)))
    return out
