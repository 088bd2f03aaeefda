"""What a consumer receives and settles: deliveries, their ack / reject, dead letters read
back, and how a message is published (persistence, body, queue TTL)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.abc

from shared.broker.topology import (
    _BROKER_ERRORS,
    QUEUE_HEADER,
    REASON_HEADER,
    UnpublishableMessage,
)
from shared.messages import (
    MAX_MESSAGE_BYTES,
    Batch,
    JobDispatch,
    Message,
    _Message,
    encode,
    unpack,
)

log = logging.getLogger(__name__)
Channel = aiormq.abc.AbstractChannel
# Seconds a consumer's cancel or close, or the connection's close, may wait for the
# broker: a robust channel waits for its reconnection, which in an outage may never
# come, and a service that stops must not hang on it.
CLOSE_TIMEOUT = 5.0


class Delivery:
    """One received message, decoded, with explicit ack / reject."""

    __slots__ = ("_raw", "_unsettled", "message", "received_at", "redelivered", "routing_key")

    def __init__(
        self,
        raw: aio_pika.abc.AbstractIncomingMessage,
        message: Message,
        received_at: float | None = None,
        unsettled: Unsettled | None = None,
    ) -> None:
        self._raw = raw
        self._unsettled = unsettled  # its consumer's (ack_all looks at the others there)
        self.message = message
        self.routing_key = raw.routing_key or ""
        self.redelivered = bool(raw.redelivered)
        # time.monotonic() when it arrived: this process's own clock (a lease is
        # measured from here, never against a sender's clock).
        self.received_at = time.monotonic() if received_at is None else received_at

    @property
    def messages(self) -> list[Any]:
        """What the body carries: a batch's items in order, or the one message."""
        return unpack(self.message)

    async def ack(self) -> None:
        try:
            await self._raw.ack()
        except _BROKER_ERRORS as exc:
            # Its channel is gone (reconnect): the broker redelivers the message on
            # the new channel, and every handler is idempotent. Nothing to do here.
            log.info("ack of %s on a closed channel skipped (%s)", self.routing_key, exc)

    async def reject(self, *, requeue: bool) -> None:
        try:
            await self._raw.reject(requeue=requeue)
        except _BROKER_ERRORS as exc:
            log.info("reject of %s on a closed channel skipped (%s)", self.routing_key, exc)


class Unsettled:
    """The deliveries one consumer has received and not yet acked or rejected, by the
    broker channel they came on (a reconnection brings a new one, and the broker gives
    the old one's again on it). A batch is acked with one ``multiple`` ack only up to
    the first of these outside the batch: a delivery still on its way to the consumer's
    buffer (its bad item's dead letter awaiting the broker's confirm, its handler tried
    again) or left in the buffer for a later batch is never settled by another's ack."""

    __slots__ = ("_by_channel", "_prune_at")
    PRUNE_AT_LEAST = 256

    def __init__(self) -> None:
        self._by_channel: dict[Channel, dict[int, aio_pika.abc.AbstractIncomingMessage]] = {}
        # Deliveries settled one by one (Delivery.ack, a dead letter's settle) stay here
        # until pruned: when a channel's entries reach this, at amortized O(1) a delivery.
        self._prune_at = self.PRUNE_AT_LEAST

    def add(self, raw: aio_pika.abc.AbstractIncomingMessage) -> None:
        if raw.delivery_tag is None:
            return
        try:
            channel = raw.channel
        except _BROKER_ERRORS:  # closed already: the broker gives it again on the next one
            return
        tags = self._by_channel.get(channel)
        if tags is None:  # the first channel, or a reconnection's: forget the closed ones
            for old in [c for c in self._by_channel if c.is_closed]:
                del self._by_channel[old]
            tags = self._by_channel[channel] = {}
        tags[raw.delivery_tag] = raw
        if len(tags) >= self._prune_at:
            _prune(tags)
            self._prune_at = max(self.PRUNE_AT_LEAST, 2 * len(tags))

    def first_outside(self, channel: Channel, batch: set[int]) -> int | None:
        """The lowest tag on ``channel`` still unsettled and not in ``batch``."""
        tags = self._by_channel.get(channel, {})
        _prune(tags)
        return min((t for t in tags if t not in batch), default=None)

    def settled(self, channel: Channel, batch: set[int]) -> None:
        tags = self._by_channel.get(channel, {})
        for tag in batch:
            tags.pop(tag, None)


def _prune(tags: dict[int, aio_pika.abc.AbstractIncomingMessage]) -> None:
    """Forget the deliveries settled one by one."""
    for tag in [t for t, raw in tags.items() if raw.processed]:
        del tags[tag]


async def ack_all(deliveries: Sequence[Delivery]) -> None:
    """Ack a batch: per channel one ``multiple`` ack (its highest delivery tag) for the
    deliveries below the first unsettled delivery outside the batch (``Unsettled``), and
    one ack each for the rest. A delivery whose channel is gone is skipped: the broker
    redelivers it (handlers are idempotent)."""
    by_channel: dict[Channel, list[Delivery]] = {}
    for d in deliveries:
        try:
            channel = d._raw.channel
        except _BROKER_ERRORS:
            continue
        by_channel.setdefault(channel, []).append(d)
    for channel, group in by_channel.items():
        tags = {d._raw.delivery_tag or 0 for d in group}
        unsettled = group[0]._unsettled
        if unsettled is None:  # not from a consumer: nothing known of the others
            limit: int | None = min(tags)
        else:
            limit = unsettled.first_outside(channel, tags)
        below = [d for d in group if limit is None or (d._raw.delivery_tag or 0) < limit]
        alone = [d for d in group if limit is not None and (d._raw.delivery_tag or 0) >= limit]
        try:
            if below:
                await max(below, key=lambda d: d._raw.delivery_tag or 0)._raw.ack(multiple=True)
            for d in alone:
                await d._raw.ack()
        except _BROKER_ERRORS as exc:
            log.info("ack of %d message(s) on a closed channel skipped (%s)", len(group), exc)
        finally:
            if unsettled is not None:
                unsettled.settled(channel, tags)


Handler = Callable[[Delivery], Awaitable[None]]
# A look at a fan-out copy before it is decoded: (body, routing key) -> done with it.
Skim = Callable[[bytes, str], bool]


# Messages whose content exists nowhere else until their consumer has stored it: a
# worker's reports, log lines and progress. They are persistent (written to disk by a
# durable queue, kept across a broker restart). The others are transient: the database
# already holds what they say (state events, wake-up hints, monitoring), or a lost one is
# recovered from it (a dispatch that never arrives is put back after the lease; cancels
# are re-sent; heartbeats come every few seconds). A persistent message to a durable
# queue costs the broker a disk write and its confirm waits for it.
PERSISTENT_KINDS = frozenset({"job.status", "job.logs", "job.progress"})


def delivery_mode(message: _Message) -> aio_pika.DeliveryMode:
    kind = message.of if isinstance(message, Batch) else message.kind  # type: ignore[attr-defined]
    if kind in PERSISTENT_KINDS:
        return aio_pika.DeliveryMode.PERSISTENT
    return aio_pika.DeliveryMode.NOT_PERSISTENT


def body_of(message: _Message) -> bytes:
    """``message`` encoded; UnpublishableMessage if it cannot be, or if it is over
    MAX_MESSAGE_BYTES (a broker may refuse it, and no receiver accepts it)."""
    try:
        body = encode(message)
    except (TypeError, ValueError) as exc:
        kind = getattr(message, "kind", type(message).__name__)
        raise UnpublishableMessage(f"{kind} cannot be encoded: {exc}") from exc
    if len(body) > MAX_MESSAGE_BYTES:
        kind = getattr(message, "kind", type(message).__name__)
        raise UnpublishableMessage(
            f"{kind} is {len(body):,} bytes; the limit is {MAX_MESSAGE_BYTES:,}"
        )
    return body


def queue_ttl(message: _Message) -> float | None:
    """How long a dispatch may wait in its worker's queue (the AMQP ``expiration``): its
    lease. The broker measures it on its own clock and drops a dispatch nobody took in
    time (the scheduler puts that job back after the lease), so a worker that comes back
    with the same id never starts an attempt the scheduler has moved on from."""
    leases = [m.lease_seconds for m in unpack(message) if isinstance(m, JobDispatch)]  # type: ignore[arg-type]
    return max(0.001, min(leases)) if leases else None


@dataclass(frozen=True)
class DeadLetter:
    """A message in ``<ns>.dead-letter``: its body and why it is there."""

    body: bytes
    routing_key: str
    reason: str | None  # None: dead-lettered by the broker (see x-death in the UI)
    queue: str | None  # the queue it was taken from
    headers: dict[str, Any]


async def _settle(raw: aio_pika.abc.AbstractIncomingMessage, *, requeue: bool | None) -> None:
    """Ack (``requeue`` None) or reject a delivery; a closed channel is not an error here
    (the broker redelivers what was not settled)."""
    if raw.processed:
        return
    try:
        if requeue is None:
            await raw.ack()
        else:
            await raw.reject(requeue=requeue)
    except _BROKER_ERRORS as exc:
        log.info("settling %s on a closed channel skipped (%s)", raw.routing_key, exc)


class HandlersRunning:
    """The deliveries of one consumer its handler is still on. A channel closed under
    a handler whose ack is on its way makes the broker close the whole connection
    (the ack reaches a channel it has already closed: CHANNEL_ERROR), so a consumer
    is closed only once these are done."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def track(
        self, handle: Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]
    ) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        async def tracked(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            self._count += 1
            self._idle.clear()
            try:
                await handle(raw)
            finally:
                self._count -= 1
                if self._count == 0:
                    self._idle.set()

        return tracked

    async def done(self) -> None:
        await self._idle.wait()


class Consumer:
    """A running consumer; ``cancel()`` stops deliveries (unacked ones are requeued on close)."""

    def __init__(
        self, queue: aio_pika.abc.AbstractQueue, tag: str, handlers: HandlersRunning
    ) -> None:
        self._queue = queue
        self._tag = tag
        self._handlers = handlers

    async def cancel(self) -> None:
        """Stop deliveries (given up after ``CLOSE_TIMEOUT``: the broker is away, and
        stops them itself when the connection goes)."""
        await give_up_after_close_timeout(
            self._queue.cancel(self._tag), f"cancelling consumer {self._tag}"
        )

    async def close(self) -> None:
        """Stop, let the handlers finish what they were given, and close the consumer's
        channel: what it had not acked is redelivered (each step given up after
        ``CLOSE_TIMEOUT``)."""
        await self.cancel()
        await give_up_after_close_timeout(
            self._handlers.done(), f"waiting for consumer {self._tag}'s handlers"
        )
        await give_up_after_close_timeout(
            self._queue.channel.close(), f"closing consumer channel {self._tag}"
        )


async def give_up_after_close_timeout(step: Awaitable[object], what: str) -> None:
    """Await a step of closing down; a broker error, or no answer within
    ``CLOSE_TIMEOUT``, is logged and the caller goes on."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await step
    except _BROKER_ERRORS as exc:  # TimeoutError among them
        log.warning("%s failed: %r", what, exc)


def _dead_letter(raw: aio_pika.abc.AbstractIncomingMessage) -> DeadLetter:
    headers = dict(raw.headers or {})

    def text(name: str) -> str | None:
        value = headers.get(name)
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    return DeadLetter(
        body=raw.body,
        routing_key=raw.routing_key or "",
        reason=text(REASON_HEADER),
        queue=text(QUEUE_HEADER),
        headers=headers,
    )
