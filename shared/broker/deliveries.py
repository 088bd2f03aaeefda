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
# Seconds a consumer's cancel or close, or the connection's close, may wait for the
# broker: a robust channel waits for its reconnection, which in an outage may never
# come, and a service that stops must not hang on it.
CLOSE_TIMEOUT = 5.0


class Delivery:
    """One received message, decoded, with explicit ack / reject."""

    __slots__ = ("_raw", "message", "received_at", "redelivered", "routing_key")

    def __init__(
        self,
        raw: aio_pika.abc.AbstractIncomingMessage,
        message: Message,
        received_at: float | None = None,
    ) -> None:
        self._raw = raw
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


async def ack_all(deliveries: Sequence[Delivery]) -> None:
    """Ack a batch with one ``multiple`` ack per channel (the highest delivery tag).

    Only for batches that hold every earlier unsettled delivery of their channels (a
    consumer that buffers its deliveries in arrival order and settles them in order)."""
    last: dict[int, Delivery] = {}
    for d in deliveries:
        try:
            key = id(d._raw.channel)
        except _BROKER_ERRORS:
            continue  # its channel is gone: the broker redelivers it (handlers are idempotent)
        prev = last.get(key)
        if prev is None or (d._raw.delivery_tag or 0) > (prev._raw.delivery_tag or 0):
            last[key] = d
    for d in last.values():
        try:
            await d._raw.ack(multiple=True)
        except _BROKER_ERRORS as exc:
            log.info("ack of %d message(s) on a closed channel skipped (%s)", len(deliveries), exc)


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
