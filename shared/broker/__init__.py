"""AMQP topology and transport: the only package that imports aio_pika (conventions §2).

Names derive from ``SWITCHYARD_NAMESPACE`` so two stacks can share one broker:

* ``<ns>.events``       durable topic exchange every message goes through
* ``<ns>.dead``         fanout exchange for messages no consumer can decode or apply
* ``<ns>.dead-letter``  durable queue bound to it (inspect it in the RabbitMQ UI; the
                        reason is in the ``x-switchyard-reason`` header)
* ``<ns>.scheduler`` / ``<ns>.logger`` / ``<ns>.worker.<id>``  durable service queues

A worker's reports, log lines and progress are persistent, the rest transient (see
``delivery_mode``); channels use publisher confirms, and a publish waits at most
``publish_timeout`` for the confirm; broker failures surface as BrokerUnavailable.

The package: ``topology`` (names, constants), ``deliveries`` (what consumers receive and
settle), and here the ``Broker`` (connection, publishing, consuming, dead letters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from shared.bodies import batched
from shared.broker.deliveries import (
    Consumer,
    DeadLetter,
    Delivery,
    Handler,
    HandlersRunning,
    Skim,
    Unsettled,
    _dead_letter,
    _settle,
    ack_all,
    body_of,
    delivery_mode,
    give_up_after_close_timeout,
    queue_ttl,
)
from shared.broker.topology import (
    _BROKER_ERRORS,
    DEAD_LETTER_RETRY_PAUSE,
    HANDLER_TRIES,
    MAX_REASON_CHARS,
    QUEUE_HEADER,
    REASON_HEADER,
    SERVICE_HEADER,
    Topology,
    UnpublishableMessage,
)
from shared.errors import BrokerUnavailable
from shared.messages import (
    MAX_TEXT_CHARS,
    Rejected,
    _Message,
    decode_each,
    encode,
    routing_key,
    unpack,
)

__all__ = [
    "HANDLER_TRIES",
    "Broker",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "Topology",
    "UnpublishableMessage",
    "ack_all",
]

log = logging.getLogger(__name__)

MAX_ROUTING_KEY_BYTES = 255  # AMQP 0-9-1's shortstr


class Broker:
    """A robust connection, one confirming publish channel, and consumers."""

    def __init__(
        self, url: str, namespace: str, *, name: str, publish_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.topology = Topology(namespace)
        self.name = name
        # Sent as each message's AMQP app-id: a consumer can tell its own process's
        # messages apart without decoding them (see ``consume(skip_own=...)``).
        self.instance_id = f"{name}-{uuid.uuid4().hex[:12]}"
        self.publish_timeout = publish_timeout
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._dead_exchange: aio_pika.abc.AbstractExchange | None = None
        self._consumer_channels: list[aio_pika.abc.AbstractChannel] = []

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, timeout: float = 30.0) -> None:
        """Connect (retrying until ``timeout``) and declare the shared exchanges."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self._connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": self.name}, timeout=5
                )
                break
            except _BROKER_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc
                log.warning("RabbitMQ not reachable (%s); retrying in 1 s", exc)
                await asyncio.sleep(1)
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._declare_exchanges(self._publish_channel)

    async def _declare_exchanges(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractExchange:
        topo = self.topology
        dead = await channel.declare_exchange(
            topo.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(topo.dead_queue, durable=True)
        await dead_queue.bind(dead)
        self._dead_exchange = dead
        return await channel.declare_exchange(
            topo.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def close(self) -> None:
        """Close the connection; given up after ``CLOSE_TIMEOUT`` (in an outage)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        await give_up_after_close_timeout(connection.close(), "closing the connection to RabbitMQ")

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def ping(self) -> bool:
        """True when the connection is up (the robust connection reconnects by itself)."""
        return (
            self.is_connected
            and self._publish_channel is not None
            and not (self._publish_channel.is_closed)
        )

    async def publish(
        self,
        message: _Message,
        key: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Publish one message (delivery mode by its kind) and wait for the broker's confirm."""
        if self._exchange is None:
            raise BrokerUnavailable("broker is not connected")
        if key is None:
            key = routing_key(message)
        if len(key.encode()) > MAX_ROUTING_KEY_BYTES:
            raise UnpublishableMessage(
                f"routing key over {MAX_ROUTING_KEY_BYTES} bytes (AMQP's bound): {key[:100]}…"
            )
        amqp_message = aio_pika.Message(
            body_of(message),
            content_type="application/json",
            delivery_mode=delivery_mode(message),
            type=message.kind,  # type: ignore[attr-defined]
            app_id=self.instance_id,
            expiration=queue_ttl(message),
        )
        try:
            await self._exchange.publish(
                amqp_message,
                key,
                mandatory=False,
                timeout=timeout if timeout is not None else self.publish_timeout,
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            # RabbitMQ closes the channel on a body over its max_message_size (the
            # robust channel reopens): sending it again would fail again.
            if "max size" in str(exc):
                raise UnpublishableMessage(f"the broker refused {key}: {exc}") from exc
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc

    async def dead_letter(
        self, body: bytes, *, reason: str, routing_key: str, queue: str | None
    ) -> None:
        """Put ``body`` in ``<ns>.dead-letter`` with why (header ``x-switchyard-reason``),
        where it was taken from (``x-switchyard-queue``) and by whom; raises
        BrokerUnavailable if the broker does not confirm it."""
        if self._dead_exchange is None:
            raise BrokerUnavailable("broker is not connected")
        headers: dict[str, Any] = {
            REASON_HEADER: reason[:MAX_REASON_CHARS],
            QUEUE_HEADER: queue or "",
            SERVICE_HEADER: self.name,
        }
        try:
            await self._dead_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers=headers,
                    app_id=self.instance_id,
                ),
                routing_key,
                timeout=self.publish_timeout,
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"dead-lettering {routing_key} failed: {exc!r}") from exc

    async def dead_letter_message(
        self, message: _Message, *, reason: str, queue: str | None, key: str | None = None
    ) -> None:
        """``dead_letter`` for a decoded message (one item of a batch, say), or for one
        a bug built wrong: what cannot be encoded is kept as its repr."""
        try:
            body = encode(message)
        except Exception as exc:  # kept readable, if not as it was
            body = repr(message)[:MAX_TEXT_CHARS].encode("utf-8", "replace")
            reason = f"{reason} (body not encodable: {type(exc).__name__}: {exc}; its repr is kept)"
        try:
            key = key or routing_key(message)
        except Exception:
            key = getattr(message, "kind", "unknown")
        await self.dead_letter(body, reason=reason, routing_key=key, queue=queue)

    async def publish_body(self, body: bytes, key: str) -> None:
        """Publish raw bytes (a dead letter put back by an operator, a test's hostile body)."""
        if self._exchange is None:
            raise BrokerUnavailable("broker is not connected")
        try:
            await self._exchange.publish(
                aio_pika.Message(body, content_type="application/json", app_id=self.instance_id),
                key,
                timeout=self.publish_timeout,
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc

    async def read_dead_letters(
        self, *, limit: int = 100, remove: bool = False
    ) -> list[DeadLetter]:
        """Up to ``limit`` messages of ``<ns>.dead-letter``, oldest first; with ``remove``
        they are taken off the queue, else left there (in the same order)."""
        if self._connection is None:
            raise BrokerUnavailable("broker is not connected")
        channel = await self._connection.channel()
        try:
            queue = await channel.get_queue(self.topology.dead_queue, ensure=False)
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []
            while len(taken) < limit:
                raw = await queue.get(no_ack=False, fail=False)
                if raw is None:
                    break
                taken.append(raw)
            out = [_dead_letter(raw) for raw in taken]
            for raw in taken:
                if remove:
                    await raw.ack()
            # Closing the channel puts what was not acked back, in its order.
            return out
        finally:
            await channel.close()

    async def publish_many(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> None:
        """Publish several messages with their confirms pipelined (not one by one).

        Runs of same-kind messages with no explicit key travel as batches (see
        ``shared.bodies.batched``)."""
        items = list(items)
        if all(key is None for _, key in items):
            items = [(m, None) for m in batched([m for m, _ in items])]
        results = await self.publish_each(items, timeout=timeout)
        errors: list[BrokerUnavailable] = []
        for (message, key), result in zip(items, results, strict=True):
            if isinstance(result, UnpublishableMessage):
                try:
                    await self._dead_letter_unpublishable(message, key, result)
                except BrokerUnavailable as exc:
                    errors.append(exc)  # a caller that retries tries it again
            elif result is not None:
                errors.append(result)
        if errors:
            raise BrokerUnavailable(
                f"{len(errors)} publish(es) failed; first: {errors[0]}"
            ) from errors[0]

    async def _dead_letter_unpublishable(
        self, message: _Message, key: str | None, exc: UnpublishableMessage
    ) -> None:
        """A message no retry can publish: logged, and its description dead-lettered
        (the body itself could not go), so the messages behind it go on; raises
        BrokerUnavailable if that dead letter is not confirmed."""
        kind = getattr(message, "kind", type(message).__name__)
        what = [
            f"{getattr(m, 'kind', '?')} job {getattr(m, 'job_id', '-')} "
            f"attempt {getattr(m, 'attempt', '-')}"
            for m in unpack(message)  # type: ignore[arg-type]
        ]
        log.error("not publishing %s (%s): %s", kind, ", ".join(what[:20]), exc)
        summary = {"unpublished": kind, "messages": what[:500], "error": str(exc)[:2000]}
        await self.dead_letter(
            json.dumps(summary).encode(), reason=f"unpublishable: {exc}",
            routing_key=key or kind, queue=None,
        )  # fmt: skip

    async def publish_each(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> list[BrokerUnavailable | UnpublishableMessage | None]:
        """Like publish_many, but report each message's fate (None = confirmed); a
        message no retry can publish is an UnpublishableMessage in its place."""
        results = await asyncio.gather(
            *(self.publish(msg, key, timeout=timeout) for msg, key in items),
            return_exceptions=True,
        )
        out: list[BrokerUnavailable | UnpublishableMessage | None] = []
        for r in results:
            if isinstance(r, BrokerUnavailable | UnpublishableMessage) or r is None:
                out.append(r)
            elif isinstance(r, BaseException):
                raise r  # a bug: the outbox then tries each message alone
        return out

    async def consume(
        self,
        queue_name: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 100,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        no_ack: bool = False,
        skip_own: bool = False,
        skim: Skim | None = None,
    ) -> Consumer:
        """Declare ``queue_name`` bound to ``bindings`` and hand each delivery to ``handler``.

        The handler acks or rejects (with ``no_ack`` the broker forgets each message as
        it sends it: only for fan-out copies that may be lost). An undecodable body (or
        batch item) goes to the dead-letter queue with its reason instead of looping
        forever. With ``skip_own`` messages this broker object published are
        dropped unread. With ``skim`` (``no_ack`` queues only) each body is offered to it
        undecoded first, with its routing key: one it returns True for is done with. A
        handler that raises is tried again (handlers are idempotent) and after
        HANDLER_TRIES dead-lettered with its error; see ``_receiver``.
        """
        if skim is not None and not no_ack:
            raise ValueError("skim is for no_ack queues: a skimmed message is never settled")
        queue = await self._declare(
            queue_name, bindings, prefetch=prefetch, durable=durable, exclusive=exclusive,
            auto_delete=auto_delete, arguments=arguments,
        )  # fmt: skip
        handlers = HandlersRunning()
        unsettled = None if no_ack else Unsettled()
        on_message = self._receiver(
            queue_name, handler, unsettled, no_ack=no_ack, skip_own=skip_own, skim=skim
        )
        tag = await queue.consume(handlers.track(on_message), no_ack=no_ack)
        return Consumer(queue, tag, handlers)

    async def _declare(
        self,
        queue_name: str,
        bindings: Sequence[str],
        *,
        prefetch: int,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any] | None,
    ) -> aio_pika.abc.AbstractQueue:
        """A channel of its own with ``prefetch``, and ``queue_name`` declared (dead-lettered
        to ``<ns>.dead``) and bound."""
        if self._connection is None:
            raise BrokerUnavailable("broker is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer_channels.append(channel)
        exchange = await channel.get_exchange(self.topology.exchange)
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.topology.dead_exchange,
            "x-queue-type": "classic",
        }
        args.update(arguments or {})
        args = {k: v for k, v in args.items() if v is not None}  # None: leave that one out
        queue = await channel.declare_queue(
            queue_name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=args,
        )
        for binding in bindings:
            await queue.bind(exchange, binding)
        return queue

    def _receiver(
        self,
        queue: str,
        handler: Handler,
        unsettled: Unsettled | None,
        *,
        no_ack: bool,
        skip_own: bool,
        skim: Skim | None,
    ) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        """What each raw delivery goes through (the one place that decides what happens
        to a message that cannot be decoded or handled): decoded, the undecodable (a
        whole body, or items of a batch) dead-lettered with the reason, the rest handed
        to ``handler``; a handler that raises is tried HANDLER_TRIES times, then its
        delivery is dead-lettered. Either way it is acked and the consumer goes on; a
        delivery whose dead letter the broker does not confirm is put back in its queue
        (``_put_back``), never rejected to the broker's own dead-lettering."""

        async def on_message(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            received_at = time.monotonic()
            if unsettled is not None:
                unsettled.add(raw)
            if skim is not None:
                try:
                    if skim(raw.body, raw.routing_key or ""):
                        return
                except Exception:  # the skimmer's bug: the message is decoded as usual
                    log.exception("skimming a message of %s from %s failed", raw.routing_key, queue)
            try:
                message, rejected = decode_each(raw.body)
            except Exception as exc:  # decode_each means never to raise: a bug, not the body's
                log.exception("decoding a message of %s from %s failed", raw.routing_key, queue)
                reason = f"could not be decoded: {type(exc).__name__}: {exc}"
                message, rejected = None, [Rejected(raw.body, reason)]
            if rejected and not await self._settle_rejected(raw, queue, rejected, no_ack=no_ack):
                return
            if message is None:
                return
            await self._handle(
                queue, handler, Delivery(raw, message, received_at, unsettled), no_ack=no_ack
            )

        if not skip_own:
            return on_message

        async def skipping_own(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            # What this process published reaches its handler another way (the API's
            # hub is handed its own events at once): drop the broker's copy undecoded.
            if raw.app_id == self.instance_id:
                if not no_ack:
                    await raw.ack()
                return
            await on_message(raw)

        return skipping_own

    async def _settle_rejected(
        self,
        raw: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        rejected: list[Any],
        *,
        no_ack: bool,
    ) -> bool:
        """Dead-letter what could not be decoded (the whole body, or the bad items of a
        batch whose good items go on). False when nothing is left to handle."""
        key = raw.routing_key or ""
        for r in rejected:
            log.error("dead-lettering a message of %s from %s: %s", key, queue, r.reason)
        if no_ack:  # a fan-out copy (the API's stream): the durable queues have the message
            return True
        whole = len(rejected) == 1 and rejected[0].body is raw.body
        try:
            for r in rejected:
                await self.dead_letter(r.body, reason=r.reason, routing_key=key, queue=queue)
        except BrokerUnavailable as exc:
            await self._put_back(raw, queue, exc)
            return False
        if whole:
            await _settle(raw, requeue=None)
            return False
        return True

    async def _handle(
        self, queue: str, handler: Handler, delivery: Delivery, *, no_ack: bool
    ) -> None:
        raw = delivery._raw
        for attempt in range(1, HANDLER_TRIES + 1):
            try:
                await handler(delivery)
                return
            except Exception as exc:
                if no_ack:
                    log.exception("handler failed for %s (no-ack queue: skipped)", raw.routing_key)
                    return
                if raw.processed:  # it settled the delivery itself before it raised
                    log.exception("handler failed for %s after settling it", raw.routing_key)
                    return
                log.exception(
                    "handler failed for %s (try %d of %d)", raw.routing_key, attempt, HANDLER_TRIES
                )
                last = exc
                if attempt < HANDLER_TRIES:
                    await asyncio.sleep(0.2 * attempt)  # a passing failure may pass
        reason = f"handler failed {HANDLER_TRIES} times: {type(last).__name__}: {last}"
        try:
            await self.dead_letter(
                raw.body, reason=reason, routing_key=raw.routing_key or "", queue=queue
            )
        except BrokerUnavailable as exc:
            await self._put_back(raw, queue, exc)
            return
        await _settle(raw, requeue=None)

    async def _put_back(
        self, raw: aio_pika.abc.AbstractIncomingMessage, queue: str, exc: BrokerUnavailable
    ) -> None:
        """A dead letter of ``raw`` (or of a bad item of it) was not confirmed: requeue
        the whole delivery after a pause, to be decoded and handled again (handlers are
        idempotent; a dead letter that did go may go twice). Nothing of it is lost."""
        log.error(
            "dead letter not confirmed (%s); putting %s back in %s in %.1f s",
            exc, raw.routing_key, queue, DEAD_LETTER_RETRY_PAUSE,
        )  # fmt: skip
        await asyncio.sleep(DEAD_LETTER_RETRY_PAUSE)
        await _settle(raw, requeue=True)

    async def delete_namespace(self, extra_queues: Sequence[str] = ()) -> None:
        """Remove this namespace's exchanges and queues (tests clean up what they made)."""
        if self._connection is None:
            return
        channel = await self._connection.channel()
        topo = self.topology
        for name in (topo.scheduler_queue, topo.logger_queue, topo.dead_queue, *extra_queues):
            await channel.queue_delete(name)
        await channel.exchange_delete(topo.exchange)
        await channel.exchange_delete(topo.dead_exchange)
        await channel.close()
