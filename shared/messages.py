"""Every message body on the ``<namespace>.events`` exchange, as versioned pydantic models.

One wire schema for all services (conventions §1): senders build these models,
receivers call :func:`decode`. Bodies are JSON; ``v`` is the schema version and
``kind`` names the model, so a body is self-describing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from shared.errors import DecodeError

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1  # SCHEMA_VERSION
    ts: datetime = Field(default_factory=utcnow)


class ResourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_units: float = Field(gt=0)
    memory_mb: int = Field(gt=0)


class JobSubmitted(_Message):
    """api -> scheduler: wake-up hint (the database is the truth)."""

    kind: Literal["job.submitted"] = "job.submitted"
    job_id: UUID
    type: str
    priority: str


class JobDispatch(_Message):
    """scheduler -> the chosen worker."""

    kind: Literal["job.dispatch"] = "job.dispatch"
    job_id: UUID
    attempt: int
    type: str
    payload: dict[str, Any]
    resources: ResourceSpec
    timeout_seconds: float | None
    lease_expires_at: datetime


class JobCancel(_Message):
    """api/scheduler -> workers: stop this attempt."""

    kind: Literal["job.cancel"] = "job.cancel"
    job_id: UUID
    attempt: int


def _no_nul(value: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold U+0000: replace it with U+FFFD, visibly."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


class JobStatusReport(_Message):
    """worker -> scheduler, logger: what happened to one attempt."""

    kind: Literal["job.status"] = "job.status"
    job_id: UUID
    attempt: int
    worker_id: str
    # lost: written by the scheduler on behalf of a worker that died mid-attempt.
    status: Literal["started", "completed", "failed", "cancelled", "handed_back", "lost"]
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    timed_out: bool = False

    _clean = field_validator("result", "error", "traceback", mode="before")(lambda v: _no_nul(v))


class JobStateChanged(_Message):
    """Whoever committed a status change -> anyone: one persisted transition."""

    kind: Literal["job.state"] = "job.state"
    job_id: UUID
    type: str
    old_status: str | None
    new_status: str
    attempt: int
    worker_id: str | None = None
    reason: str | None = None
    # running: seconds it waited ready before dispatch; terminal: attempt run time.
    wait_seconds: float | None = None
    duration_seconds: float | None = None


class JobProgress(_Message):
    kind: Literal["job.progress"] = "job.progress"
    job_id: UUID
    type: str | None = None
    attempt: int
    done: float
    total: float | None = None
    message: str | None = None

    _clean = field_validator("message", mode="before")(lambda v: _no_nul(v))


class JobLog(_Message):
    """worker -> logger, api: one line a task logged. ``seq`` orders lines of an attempt."""

    kind: Literal["job.logs"] = "job.logs"
    job_id: UUID
    type: str | None = None
    attempt: int
    seq: int
    level: str
    message: str

    _clean = field_validator("message", mode="before")(lambda v: _no_nul(v))


class WorkerCapacity(BaseModel):
    model_config = ConfigDict(frozen=True)

    cpu_units: float
    memory_mb: int
    slots: int


class WorkerHeartbeat(_Message):
    kind: Literal["worker.heartbeat"] = "worker.heartbeat"
    worker_id: str
    state: Literal["alive", "draining", "stopped"] = "alive"
    capacity: WorkerCapacity
    allocated: WorkerCapacity
    running: list[UUID] = Field(default_factory=list)
    # Threads whose attempt already ended (timeout / cancel) but which still run: their
    # resources stay taken until they return.
    stuck: WorkerCapacity = Field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )
    task_types: list[str] = Field(default_factory=list)
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    started_at: datetime | None = None


class MonitoringQueue(_Message):
    kind: Literal["job.monitoring.queue"] = "job.monitoring.queue"
    by_status: dict[str, int]
    by_priority: dict[str, int]


class MonitoringResource(_Message):
    kind: Literal["job.monitoring.resource"] = "job.monitoring.resource"
    workers_alive: int
    capacity: WorkerCapacity
    allocated: WorkerCapacity


Item = Annotated[
    JobSubmitted
    | JobDispatch
    | JobCancel
    | JobStatusReport
    | JobStateChanged
    | JobProgress
    | JobLog
    | WorkerHeartbeat
    | MonitoringQueue
    | MonitoringResource,
    Field(discriminator="kind"),
]

# Kinds that travel in batches when a sender has several at once (a message per job
# per hop is what caps a Python queue: see docs/performance.md).
BATCHABLE = frozenset({"job.dispatch", "job.status", "job.state", "job.logs"})
MAX_BATCH_ITEMS = 500
# A batch body stays well under RabbitMQ's max_message_size (16 MiB by default on 4.x).
MAX_BATCH_BYTES = 4 * 2**20


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
            n += len(orjson.dumps(value))
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


class Batch(_Message):
    """Several messages of one kind in one body, in order (``of`` names the kind).

    Routed like its items, with ``batch`` in place of the job id: ``job.status.batch``,
    ``job.state.batch``, ``job.logs.batch``, ``job.dispatch.<worker_id>.batch``; so
    every ``<kind>.#`` binding receives it. Receivers handle the items one by one."""

    kind: Literal["batch"] = "batch"
    of: Literal["job.dispatch", "job.status", "job.state", "job.logs"]
    items: list[Item] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)

    @field_validator("items")
    @classmethod
    def _one_kind(cls, items: list[Any], info: Any) -> list[Any]:
        of = info.data.get("of")
        wrong = sorted({i.kind for i in items if i.kind != of})
        if wrong:
            raise ValueError(f"a batch of {of} holds {', '.join(wrong)}")
        return items


Message = Annotated[Item | Batch, Field(discriminator="kind")]
_PLAIN_MODELS = frozenset(
    {JobSubmitted, JobDispatch, JobCancel, JobStatusReport, JobStateChanged, JobProgress,
     JobLog, WorkerHeartbeat, MonitoringQueue, MonitoringResource, Batch, ResourceSpec,
     WorkerCapacity}
)  # fmt: skip
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


def unpack(message: Message) -> list[Any]:
    """The messages a body carries: a batch's items, or the message itself."""
    return list(message.items) if isinstance(message, Batch) else [message]


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
                out.append(Batch(of=chunk[0].kind, items=chunk))
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


def routing_key(message: _Message) -> str:
    """The routing key design.md gives each message (dispatch needs the worker id)."""
    match message:
        case JobSubmitted() | JobCancel() | JobStatusReport() | JobStateChanged() | JobProgress():
            return f"{message.kind}.{message.job_id}"
        case JobLog():
            return f"job.logs.{message.job_id}"
        case WorkerHeartbeat():
            return f"worker.heartbeat.{message.worker_id}"
        case MonitoringQueue() | MonitoringResource():
            return message.kind
        case Batch(of="job.dispatch"):
            raise ValueError("a dispatch batch's routing key needs the worker id: dispatch_key()")
        case Batch():
            return f"{message.of}.batch"
        case JobDispatch():
            raise ValueError("a dispatch's routing key needs the worker id: dispatch_key()")
    raise TypeError(f"not a Switchyard message: {type(message).__name__}")


def dispatch_key(worker_id: str, job_id: UUID | None) -> str:
    """``job.dispatch.<worker_id>.<job_id>``; ``job_id`` None: a batch for that worker."""
    return f"job.dispatch.{worker_id}.{job_id if job_id is not None else 'batch'}"


def dispatches_for(worker_id: str, dispatches: list[JobDispatch]) -> list[tuple[_Message, str]]:
    """One worker's dispatches as messages with their routing keys: batches of up to
    MAX_BATCH_ITEMS, or the plain dispatch when there is one."""
    out: list[tuple[_Message, str]] = []
    for chunk in _chunks(dispatches):
        if len(chunk) == 1:
            out.append((chunk[0], dispatch_key(worker_id, chunk[0].job_id)))
        else:
            out.append((Batch(of="job.dispatch", items=chunk), dispatch_key(worker_id, None)))
    return out


def _fields(obj: Any) -> dict[str, Any]:
    """orjson's ``default``: this module's models as their fields; anything else
    (a model of a task's own in ``result``, say) is left to pydantic (see encode)."""
    if type(obj) in _PLAIN_MODELS:
        return obj.__dict__  # type: ignore[no-any-return]
    raise TypeError


def encode(message: _Message) -> bytes:
    """The body of ``message``: the bytes ``model_dump(mode="json")`` + orjson write.

    orjson walks the models' fields itself (0.23 against 0.80 ms for a batch of 500
    state events; model_dump_json was slower still, 1.6 ms: the union-typed items slow
    pydantic's serializer). None of these models has a serializer or computed field of
    its own, so their ``__dict__`` is what pydantic would dump; a value orjson cannot
    write as pydantic would (big ints, non-str keys, foreign models) raises, and then
    pydantic writes the body (tests/unit/test_messages.py compares the two)."""
    try:
        return orjson.dumps(message.__dict__, default=_fields, option=orjson.OPT_UTC_Z)
    except TypeError:
        return pydantic_encode(message)


def pydantic_encode(message: _Message) -> bytes:
    return orjson.dumps(message.model_dump(mode="json"))


def decode(body: bytes) -> Message:
    """Parse a body into its model; anything else raises DecodeError (never requeue it)."""
    try:
        return _adapter.validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"undecodable message: {exc.error_count()} error(s): {exc}") from exc
