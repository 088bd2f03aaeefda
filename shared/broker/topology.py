"""The broker's names (exchanges, queues, bindings) and the constants the transport
shares: the errors a broker call may raise, the headers a dead letter carries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from shared.errors import SwitchyardError

# What a broker call may raise while the connection is down or being restored
# (aio-pika's CONNECTION_EXCEPTIONS include RuntimeError: ChannelInvalidStateError
# while a robust channel reconnects). All of it becomes BrokerUnavailable here.
_BROKER_ERRORS = (
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    aio_pika.exceptions.AMQPException,
    asyncio.TimeoutError,
)

# A handler that raises on a delivery is given it this many times (with a short pause
# between), then the delivery is dead-lettered with the last error: a message that
# cannot be handled must not come back forever, nor hold up the ones behind it.
HANDLER_TRIES = 3
# A delivery whose dead letter the broker did not confirm is put back in its queue after
# this pause (not rejected to the broker's dead-letter exchange: a batch's good items
# would go with it unapplied, and without the reason).
DEAD_LETTER_RETRY_PAUSE = 1.0
REASON_HEADER = "x-switchyard-reason"
QUEUE_HEADER = "x-switchyard-queue"
SERVICE_HEADER = "x-switchyard-service"
MAX_REASON_CHARS = 2000


class UnpublishableMessage(SwitchyardError):
    """A message no retry can publish: it cannot be encoded, or it is larger than
    MAX_MESSAGE_BYTES (or than the broker's own max_message_size)."""


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names for one namespace, and the bindings of the scheduler,
    the logger and a worker (an API replica's are ``services.api.stream.STREAM_BINDINGS``)."""

    namespace: str

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def scheduler_queue(self) -> str:
        return f"{self.namespace}.scheduler"

    @property
    def logger_queue(self) -> str:
        return f"{self.namespace}.logger"

    def worker_queue(self, worker_id: str) -> str:
        return f"{self.namespace}.worker.{worker_id}"

    SCHEDULER_BINDINGS: tuple[str, ...] = (
        "job.submitted.#",
        "job.status.#",
        "worker.heartbeat.#",
        "job.progress.#",
    )
    LOGGER_BINDINGS: tuple[str, ...] = ("job.logs.#", "job.status.#")

    @staticmethod
    def worker_bindings(worker_id: str) -> tuple[str, ...]:
        # `*` (one word: the job id), not `#`: worker ids have no dots, so no worker's
        # binding can match another's dispatches.
        return (f"job.dispatch.{worker_id}.*", "job.cancel.#")
