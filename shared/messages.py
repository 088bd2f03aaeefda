"""Every message body on the ``<namespace>.events`` exchange, as versioned pydantic models.

One wire schema for all services (conventions §1): senders build these models,
receivers call :func:`decode`. Bodies are JSON; ``v`` is the schema version and
``kind`` names the model, so a body is self-describing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import DecodeError
from shared.jsonvalues import (
    BIGINT_MAX,
    INT4_MAX,
    MESSAGE_TIMES,
    TASK_OUTPUT_JSON,
    WIRE_JSON,
    check_json,
    encoded_within,
    safe_text,
    truncate_text,
)

SCHEMA_VERSION = 1

# ---------------------------------------------------------------- limits (one place)
# What one message may carry. Each is below what RabbitMQ takes in one message
# (max_message_size: 128 MiB on 3.10, 16 MiB on 4.x) and what the receiving column or
# encoder holds; docs/reliability.md lists them. A sender that exceeds one finds out
# where the message is built (the worker truncates text and fails an attempt whose
# result is too large); a receiver dead-letters a body that exceeds one.
MAX_MESSAGE_BYTES = 8 * 2**20  # one body, published or received
MAX_RESULT_BYTES = 2 * 2**20  # a task's result, encoded
# A dispatch's payload, encoded; SWITCHYARD_MAX_PAYLOAD_BYTES (the API's) may not exceed it.
MAX_PAYLOAD_BYTES = 4 * 2**20
MAX_TEXT_CHARS = 64 * 1024  # a log line, an error, a traceback, a reason, a progress message
MAX_NAME_CHARS = 1000  # a task type, a status or level word
# A worker's id, as a worker takes it (--worker-id, SWITCHYARD_WORKER_ID): it is part of
# routing keys (job.dispatch.<worker_id>.<job_id>), which hold at most 255 bytes. A
# heartbeat with a longer id once joined a worker that no dispatch could reach.
WORKER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"
MAX_LIST_ITEMS = 100_000  # a heartbeat's running jobs or task types
# Integer ranges, nesting and times: shared.jsonvalues (shared with the API).


def _text(value: Any) -> Any:
    return safe_text(value) if isinstance(value, str) else value


def message_text(value: str, *, keep: Literal["head", "tail"] = "head") -> str:
    """A task's text (a log line, an error, a traceback) as a message carries it: bad
    text replaced, cut to MAX_TEXT_CHARS with a marker."""
    return truncate_text(safe_text(value), MAX_TEXT_CHARS, keep=keep)


def storable_json(value: Any, *, limit: int, what: str = "value", convert: bool = False) -> Any:
    """``value`` as JSON every hop can carry (shared.jsonvalues: WIRE_JSON, or with
    ``convert`` TASK_OUTPUT_JSON), encoded in at most ``limit`` bytes, measured exactly.
    Raises ValueError naming what is wrong and where."""
    if value is None:
        return None  # most results and every start report: nothing to walk or measure
    clean = check_json(value, TASK_OUTPUT_JSON if convert else WIRE_JSON, where=what)
    encoded_within(clean, limit, where=what)
    return clean


def _wire_time(value: datetime) -> datetime:
    """Aware (a naive time is taken as UTC), in UTC, within MESSAGE_TIMES."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # its offset pushes it past datetime's own range
        return MESSAGE_TIMES.check(value)  # raises, saying the range
    if not MESSAGE_TIMES.earliest <= utc < MESSAGE_TIMES.latest:
        MESSAGE_TIMES.check(value)  # raises, saying the range
    return utc


# The types every field below is built from.
Text = Annotated[str, BeforeValidator(_text), Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, BeforeValidator(_text), Field(max_length=MAX_NAME_CHARS)]
WorkerId = Annotated[str, Field(pattern=WORKER_ID_PATTERN)]
Int4 = Annotated[int, Field(ge=0, le=INT4_MAX)]
Count = Annotated[int, Field(ge=0, le=BIGINT_MAX)]
Real = Annotated[float, Field(allow_inf_nan=False, ge=-1e300, le=1e300)]
NonNegative = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e300)]
WireTime = Annotated[datetime, AfterValidator(_wire_time)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1  # SCHEMA_VERSION
    ts: WireTime = Field(default_factory=utcnow)


class ResourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_units: float = Field(gt=0, le=1e300, allow_inf_nan=False)
    memory_mb: int = Field(gt=0, le=INT4_MAX)


class JobSubmitted(_Message):
    """api -> scheduler: wake-up hint (the database is the truth)."""

    kind: Literal["job.submitted"] = "job.submitted"
    job_id: UUID
    type: Name
    priority: Name


def _json_field(limit: int, what: str) -> Any:
    return AfterValidator(lambda v: storable_json(v, limit=limit, what=what))


_WIRE_TIME: TypeAdapter[datetime] = TypeAdapter(WireTime)  # built once: building is slow


class JobDispatch(_Message):
    """scheduler -> the chosen worker.

    ``lease_seconds``: how long after receipt the worker may still start the attempt,
    measured on the worker's own monotonic clock (a sender and a receiver never compare
    clocks). A sender that gives only ``lease_expires_at`` gets it from that and ``ts``,
    both of its own clock; ``lease_expires_at`` stays on the wire for workers that
    predate ``lease_seconds`` (schema v1 either way)."""

    kind: Literal["job.dispatch"] = "job.dispatch"
    job_id: UUID
    attempt: Int4
    type: Name
    payload: Annotated[dict[str, Any], _json_field(MAX_PAYLOAD_BYTES, "payload")]
    resources: ResourceSpec
    timeout_seconds: Annotated[float, Field(gt=0, le=1e300, allow_inf_nan=False)] | None
    lease_expires_at: WireTime
    lease_seconds: NonNegative = 0.0

    @model_validator(mode="before")
    @classmethod
    def _lease_from_the_senders_clock(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lease_seconds") is None:
            try:
                sent = _WIRE_TIME.validate_python(data.get("ts") or utcnow())
                until = _WIRE_TIME.validate_python(data["lease_expires_at"])
            except (KeyError, ValidationError):
                return data  # the field's own validation says what is wrong
            data = {**data, "lease_seconds": max(0.0, (until - sent).total_seconds())}
            if "ts" not in data:
                data["ts"] = sent
        return data


class JobCancel(_Message):
    """api/scheduler -> workers: stop this attempt."""

    kind: Literal["job.cancel"] = "job.cancel"
    job_id: UUID
    attempt: Int4


class JobStatusReport(_Message):
    """worker -> scheduler, logger: what happened to one attempt."""

    kind: Literal["job.status"] = "job.status"
    job_id: UUID
    attempt: Int4
    worker_id: WorkerId
    # lost: written by the scheduler on behalf of a worker that died mid-attempt.
    status: Literal["started", "completed", "failed", "cancelled", "handed_back", "lost"]
    result: Annotated[Any, _json_field(MAX_RESULT_BYTES, "result")] = None
    error: Text | None = None
    traceback: Text | None = None
    timed_out: bool = False
    # On an end report: the attempt's start, when this report also stands for the start
    # report (``fold_starts``). A receiver applies that start first, as if it had come
    # on its own (absent from older workers: their start travels alone).
    started_at: WireTime | None = None

    @model_validator(mode="after")
    def _a_start_rides_only_on_an_end(self) -> JobStatusReport:
        if self.started_at is not None and self.status in ("started", "lost"):
            raise ValueError(f"started_at is for an end report, not a {self.status!r} one")
        return self

    @property
    def start_time(self) -> datetime | None:
        """When the attempt started, if this report says: a start report's own time, or
        the start an end report carries."""
        return self.ts if self.status == "started" else self.started_at


class JobStateChanged(_Message):
    """Whoever committed a status change -> anyone: one persisted transition."""

    kind: Literal["job.state"] = "job.state"
    job_id: UUID
    type: Name
    old_status: Name | None
    new_status: Name
    attempt: Int4
    worker_id: Name | None = None
    reason: Text | None = None
    # running: seconds it waited ready before dispatch; terminal: attempt run time.
    wait_seconds: Real | None = None
    duration_seconds: Real | None = None


class JobProgress(_Message):
    kind: Literal["job.progress"] = "job.progress"
    job_id: UUID
    type: Name | None = None
    attempt: Int4
    done: Real
    total: Real | None = None
    message: Text | None = None


class JobLog(_Message):
    """worker -> logger, api: one line a task logged. ``seq`` orders lines of an attempt."""

    kind: Literal["job.logs"] = "job.logs"
    job_id: UUID
    type: Name | None = None
    attempt: Int4
    seq: Int4
    level: Name
    message: Text


class WorkerCapacity(BaseModel):
    """A worker's capacity or use (a heartbeat: int4 columns), or a cluster's total."""

    model_config = ConfigDict(frozen=True)

    cpu_units: NonNegative
    memory_mb: Count
    slots: Count


class AttemptUsage(BaseModel):
    """What one process-isolated attempt uses now (thread attempts share the worker's
    process and have no figures of their own)."""

    model_config = ConfigDict(frozen=True)

    job_id: UUID
    attempt: Int4
    isolation: Literal["process"] = "process"
    pid: Int4
    cpu_percent: NonNegative  # of one core, since the previous heartbeat
    rss_mb: NonNegative  # resident memory above the idle child's own
    peak_rss_mb: NonNegative = 0.0


class WorkerHeartbeat(_Message):
    kind: Literal["worker.heartbeat"] = "worker.heartbeat"
    worker_id: WorkerId
    state: Literal["alive", "draining", "stopped"] = "alive"
    capacity: WorkerCapacity
    allocated: WorkerCapacity
    running: list[UUID] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    # Threads whose attempt already ended (timeout / cancel) but which still run: their
    # resources stay taken until they return.
    stuck: WorkerCapacity = Field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )
    task_types: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    cpu_percent: Real = 0.0
    memory_percent: Real = 0.0
    started_at: WireTime | None = None
    # Per-attempt usage of process-isolated attempts (absent from older workers).
    attempts: list[AttemptUsage] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @model_validator(mode="after")
    def _fits_the_workers_table(self) -> WorkerHeartbeat:
        for name in ("capacity", "allocated", "stuck"):
            value: WorkerCapacity = getattr(self, name)
            for field_name in ("memory_mb", "slots"):
                if getattr(value, field_name) > INT4_MAX:
                    raise ValueError(f"{name}.{field_name} is above {INT4_MAX}")
        return self


class MonitoringQueue(_Message):
    kind: Literal["job.monitoring.queue"] = "job.monitoring.queue"
    by_status: dict[Name, Count]
    by_priority: dict[Name, Count]


class MonitoringResource(_Message):
    kind: Literal["job.monitoring.resource"] = "job.monitoring.resource"
    workers_alive: Count
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
# per hop is what caps a Python queue: see docs/performance-history.md).
BatchableKind = Literal["job.dispatch", "job.status", "job.state", "job.logs", "job.progress"]
BATCHABLE = frozenset(get_args(BatchableKind))
MAX_BATCH_ITEMS = 500
# A batch body stays well under RabbitMQ's max_message_size (16 MiB by default on 4.x).
MAX_BATCH_BYTES = 4 * 2**20


class Batch(_Message):
    """Several messages of one kind in one body, in order (``of`` names the kind).

    Routed like its items, with ``batch`` in place of the job id: ``job.status.batch``,
    ``job.state.batch``, ``job.logs.batch``, ``job.progress.batch``,
    ``job.dispatch.<worker_id>.batch``; so every ``<kind>.#`` binding receives it.
    Receivers handle the items one by one."""

    kind: Literal["batch"] = "batch"
    of: BatchableKind
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
     WorkerCapacity, AttemptUsage}
)  # fmt: skip
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


def unpack(message: Message) -> list[Any]:
    """The messages a body carries: a batch's items, or the message itself."""
    return list(message.items) if isinstance(message, Batch) else [message]


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


def _fields(obj: Any) -> dict[str, Any] | str:
    """orjson's ``default``: this module's models as their fields; anything else
    (a model of a task's own in ``result``, say) is left to pydantic (see encode)."""
    if type(obj) in _PLAIN_MODELS:
        return obj.__dict__  # type: ignore[no-any-return]
    if isinstance(obj, UUID):  # asyncpg's own UUID type, which orjson does not know
        return str(obj)
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
    """Parse a body into its model; anything else raises DecodeError (never requeue it):
    a body over MAX_MESSAGE_BYTES, not JSON, an unknown kind or version, a missing field,
    a value out of its range (see the limits above)."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"body of {len(body):,} bytes is over the {MAX_MESSAGE_BYTES:,} limit")
    try:
        return _adapter.validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"undecodable message: {validation_summary(exc)}") from exc


def validation_summary(exc: ValidationError) -> str:
    """A validation error in a line or a few: where, and what is wrong (no input echoed:
    it may be megabytes)."""
    parts = [
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)[:5]
    ]
    more = exc.error_count() - len(parts)
    return f"{exc.error_count()} error(s): " + "; ".join(parts) + (f"; {more} more" if more else "")


@dataclass(frozen=True)
class Rejected:
    """A body, or one item of a batch, that cannot be decoded, and why."""

    body: bytes
    reason: str


_item_adapter: TypeAdapter[Item] = TypeAdapter(Item)


class _BatchEnvelope(_Message):
    """A batch body's own fields, checked apart from its items (``decode_each``)."""


def decode_each(body: bytes) -> tuple[Message | None, list[Rejected]]:
    """Like ``decode``, but a batch whose envelope is sound keeps its good items: what
    it returns holds them (or is None), and each bad item is Rejected with its reason,
    so one bad report does not take 499 good ones with it. Never raises: whatever the
    body, each part of it is returned or Rejected with why (an envelope that is not
    sound, a bad ``ts`` say, rejects the whole body)."""
    try:
        return decode(body), []
    except DecodeError as exc:
        whole = [Rejected(body, str(exc))]
    if len(body) > MAX_MESSAGE_BYTES:
        return None, whole
    try:  # the stdlib, not orjson: it keeps huge integers and lone surrogates as sent
        raw = json.loads(body)
    except (ValueError, RecursionError):
        return None, whole
    if not (
        isinstance(raw, dict)
        and raw.get("kind") == "batch"
        and raw.get("v") == SCHEMA_VERSION
        and isinstance(raw.get("of"), str)
        and raw["of"] in BATCHABLE
        and isinstance(raw.get("items"), list)
        and 0 < len(raw["items"]) <= MAX_BATCH_ITEMS
    ):
        return None, whole
    try:  # checked before the items: a bad envelope rejects the body whole
        ts = _BatchEnvelope.model_validate(raw).ts
    except ValidationError as exc:
        return None, [Rejected(body, f"undecodable batch: {validation_summary(exc)}")]
    good: list[Any] = []
    rejected: list[Rejected] = []
    for item in raw["items"]:
        try:
            item_body = json.dumps(item).encode()
        except (ValueError, RecursionError):  # loads took it, so dumps should: still
            return None, whole
        try:
            message = _item_adapter.validate_json(item_body)
        except ValidationError as exc:
            rejected.append(
                Rejected(item_body, f"undecodable batch item: {validation_summary(exc)}")
            )
            continue
        if message.kind != raw["of"]:
            rejected.append(Rejected(item_body, f"a {message.kind} item in a batch of {raw['of']}"))
            continue
        good.append(message)
    if not good:
        return None, whole
    try:
        return Batch(of=raw["of"], items=good, ts=ts), rejected
    except ValidationError as exc:  # its parts were each checked: not expected, still
        return None, [Rejected(body, f"undecodable batch: {validation_summary(exc)}")]
