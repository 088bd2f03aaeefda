"""Fan-out of live events to WebSocket clients.

Each API replica binds its own exclusive, auto-delete queue to ``job.state.#``,
``job.logs.#`` and ``job.progress.#`` and hands every event to the connected
clients whose filters match. A client never slows the others: each has a bounded
buffer, and when it is full new events for that client are *dropped* (not queued),
counted, and the client receives ``{"event": "dropped", "data": {"count": n}}`` before
its next event. The client stays connected and can re-read what it missed over REST.

The hub also keeps the last log lines of recently active jobs, so a client asking for
``replay`` gets lines the logger has not written yet as well as those it has.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from services.api.summaries import StateSummary, state_summaries
from shared.broker import Broker, Delivery
from shared.errors import DecodeError
from shared.messages import (
    JobLog,
    JobProgress,
    JobStateChanged,
    Message,
)

log = logging.getLogger(__name__)

STREAM_BINDINGS = ("job.state.#", "job.logs.#", "job.progress.#")
RECENT_JOBS = 10_000  # jobs whose recent log lines are kept for replay
RECENT_LINES = 2_000  # lines kept per job
RECENT_TOTAL = 100_000  # lines kept in all (memory bound per API replica)
# What the kept lines' text may weigh (Python's own size of each message: a line may be
# 64 Ki characters, four bytes each past U+FFFF), per job and in all. A replay sends at
# most 8 MiB of all its jobs' lines together (routers/stream.py REPLAY_BYTES).
RECENT_BYTES_PER_JOB = 8 * 1024 * 1024
RECENT_BYTES = 64 * 1024 * 1024
# What one client's buffer of events waiting to be sent may weigh (beside its count).
SUBSCRIBER_BYTES = 8 * 1024 * 1024
RECENT_IDLE_SECONDS = 600  # a job silent this long is forgotten (the logger has it)
QUEUE_MAX_LENGTH = 100_000  # the replica's queue drops its oldest beyond this


@dataclass(frozen=True)
class StreamFilter:
    job_ids: frozenset[UUID] | None = None
    types: frozenset[str] | None = None
    statuses: frozenset[str] | None = None

    def matches(self, event: str, job_id: UUID, job_type: str | None, status: str | None) -> bool:
        if self.job_ids is not None and job_id not in self.job_ids:
            return False
        if self.types is not None and job_type not in self.types:
            return False
        if self.statuses is not None:
            # log and progress events come from running jobs only
            current = status if event == "state" else "running"
            if current not in self.statuses:
                return False
        return True


def iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as the REST API writes times."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(
    event: str, job_id: UUID, attempt: int, ts: str, data: dict[str, Any]
) -> dict[str, Any]:
    return {"event": event, "job_id": str(job_id), "attempt": attempt, "ts": ts, "data": data}


def to_envelope(message: Message) -> tuple[dict[str, Any], str | None, str | None] | None:
    """(envelope, job type, new status) for a stream message; None for other kinds."""
    match message:
        case JobStateChanged():
            data: dict[str, Any] = {
                "old_status": message.old_status,
                "new_status": message.new_status,
                "type": message.type,
                "worker_id": message.worker_id,
                "reason": message.reason,
            }
            return (
                envelope("state", message.job_id, message.attempt, iso(message.ts), data),
                message.type,
                message.new_status,
            )
        case JobLog():
            return log_envelope(message), message.type, None
        case JobProgress():
            data = {"done": message.done, "total": message.total, "message": message.message}
            return (
                envelope("progress", message.job_id, message.attempt, iso(message.ts), data),
                message.type,
                None,
            )
    return None


def log_envelope(line: JobLog) -> dict[str, Any]:
    data = {"seq": line.seq, "level": line.level, "message": line.message}
    return envelope("log", line.job_id, line.attempt, iso(line.ts), data)


class TooManySockets(Exception):
    """The key already has its allowed number of open sockets on this replica."""


class Subscriber:
    """One client's bounded buffer of serialized events."""

    def __init__(self, stream_filter: StreamFilter, *, maxsize: int, key: str = "") -> None:
        self.filter = stream_filter
        self.key = key
        self.buffer: deque[tuple[dict[str, Any], bytes]] = deque()
        self.maxsize = maxsize
        self.weight = 0  # bytes of the buffered bodies
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def offer(self, event: dict[str, Any], body: bytes) -> None:
        if len(self.buffer) >= self.maxsize or self.weight + len(body) > SUBSCRIBER_BYTES:
            self.dropped += 1
        else:
            self.buffer.append((event, body))
            self.weight += len(body)
        self.wakeup.set()

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n

    async def next(self) -> tuple[int, tuple[dict[str, Any], bytes] | None]:
        """Wait for something to send: (events dropped since last time, next event or None)."""
        while not self.buffer and not self.dropped:
            self.wakeup.clear()
            await self.wakeup.wait()
        if not self.buffer:
            return self.take_dropped(), None
        event, body = self.buffer.popleft()
        self.weight -= len(body)
        return self.take_dropped(), (event, body)


class EventHub:
    def __init__(self, broker: Broker, *, buffer_size: int) -> None:
        self.broker = broker
        self.buffer_size = buffer_size
        self.subscribers: set[Subscriber] = set()
        self._per_key: dict[str, int] = {}  # open sockets per API key id
        self.listeners: list[Callable[[Message | StateSummary], None]] = []
        # Lines as they came: made envelopes only when a client asks for a replay (every
        # replica keeps every job's lines, and few are ever replayed).
        self._recent: OrderedDict[UUID, _Kept] = OrderedDict()
        self._recent_total = 0  # lines
        self._recent_bytes = 0

    async def start(self) -> None:
        name = f"{self.broker.topology.namespace}.api.{uuid.uuid4().hex[:12]}"
        await self.broker.consume(
            name,
            STREAM_BINDINGS,
            self._on_delivery,
            prefetch=2000,
            durable=False,
            exclusive=True,
            auto_delete=True,
            no_ack=True,
            skip_own=True,  # this replica's own events come through publish_local
            skim=self._skim,
            # A replica that cannot keep up loses its oldest live events (they are in
            # the database), never the broker's memory.
            arguments={
                "x-max-length": QUEUE_MAX_LENGTH,
                "x-overflow": "drop-head",
                "x-dead-letter-exchange": None,  # overflow is not a dead letter
            },
        )

    def subscribe(
        self, stream_filter: StreamFilter, *, key: str = "", max_per_key: int | None = None
    ) -> Subscriber:
        """A new subscriber for ``key`` (an API key id); ``TooManySockets`` when that key
        has ``max_per_key`` already."""
        if max_per_key is not None and self._per_key.get(key, 0) >= max_per_key:
            raise TooManySockets(
                f"too many sockets for this key: {max_per_key} open on this API replica "
                "(SWITCHYARD_WS_MAX_SOCKETS_PER_KEY); close some"
            )
        sub = Subscriber(stream_filter, maxsize=self.buffer_size, key=key)
        self.subscribers.add(sub)
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        left = self._per_key.get(sub.key, 1) - 1
        if left > 0:
            self._per_key[sub.key] = left
        else:
            self._per_key.pop(sub.key, None)

    def recent_lines(self, job_id: UUID) -> list[dict[str, Any]]:
        kept = self._recent.get(job_id)
        return [log_envelope(line) for line in kept.lines] if kept else []

    def _skim(self, body: bytes, routing_key: str) -> bool:
        """With no client connected, nothing but the counters reads a state event and
        nobody a progress update: the counters get a state event's few fields
        (``state_summaries``: about half of a whole decode, and every replica reads
        every event), and what comes on a progress key is not read at all. False:
        decode it whole (a client is connected, a log line to keep for replay, a body
        the summary refuses: the whole decode says what is wrong with it).

        So with no client connected, a state event whose other fields (id, attempt,
        worker, reason, time) are malformed is counted rather than refused with a log
        line, and a malformed body on a progress key is dropped unlogged: both are
        fan-out copies only API replicas read (docs/performance-history.md)."""
        if self.subscribers:
            return False
        if routing_key.startswith("job.progress."):
            return True
        if not routing_key.startswith("job.state."):
            return False
        try:
            summaries = state_summaries(body)
        except DecodeError:
            return False
        for summary in summaries:
            self._notify(summary)
        return True

    async def _on_delivery(self, delivery: Delivery) -> None:
        for message in delivery.messages:
            # One event that cannot be forwarded must not cost the others of its batch
            # (these are fan-out copies: the database has them all).
            try:
                self.publish_local(message)
            except Exception:
                log.exception("event %s not forwarded", getattr(message, "kind", "?"))

    def publish_local(self, message: Message) -> None:
        """Hand one event to listeners (metrics) and matching subscribers."""
        self._notify(message)
        if isinstance(message, JobLog):
            self._remember(message)
        if not self.subscribers:
            return
        converted = to_envelope(message)
        if converted is None:
            return
        event, job_type, status = converted
        job_id = message.job_id  # type: ignore[union-attr]
        body: bytes | None = None
        for sub in list(self.subscribers):
            if sub.filter.matches(event["event"], job_id, job_type, status):
                if body is None:
                    body = orjson.dumps(event)
                sub.offer(event, body)

    def _notify(self, message: Message | StateSummary) -> None:
        for listener in self.listeners:
            try:
                listener(message)
            except Exception:
                log.exception("event listener failed on %s", getattr(message, "kind", "?"))

    def _remember(self, line: JobLog) -> None:
        now = time.monotonic()
        kept = self._recent.pop(line.job_id, None) or _Kept()
        kept.touched = now
        kept.lines.append(line)
        weight = sys.getsizeof(line.message)
        kept.bytes += weight
        self._recent_total += 1
        self._recent_bytes += weight
        while len(kept.lines) > RECENT_LINES or kept.bytes > RECENT_BYTES_PER_JOB:
            self._drop_oldest(kept)
        self._recent[line.job_id] = kept
        # Oldest-touched first: evict while over any bound.
        while self._recent and (
            len(self._recent) > RECENT_JOBS
            or self._recent_total > RECENT_TOTAL
            or self._recent_bytes > RECENT_BYTES
            or now - next(iter(self._recent.values())).touched > RECENT_IDLE_SECONDS
        ):
            _, dropped = self._recent.popitem(last=False)
            self._recent_total -= len(dropped.lines)
            self._recent_bytes -= dropped.bytes

    def _drop_oldest(self, kept: _Kept) -> None:
        weight = sys.getsizeof(kept.lines.popleft().message)
        kept.bytes -= weight
        self._recent_total -= 1
        self._recent_bytes -= weight


@dataclass
class _Kept:
    """One job's recent lines, kept for replay."""

    touched: float = 0.0  # time.monotonic() of its last line
    lines: deque[JobLog] = field(default_factory=deque)
    bytes: int = 0  # what their text weighs (sys.getsizeof)
