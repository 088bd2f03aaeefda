from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika.exceptions
import asyncpg
import httpx
import pytest
import uvicorn

from services.api.app import create_app
from services.api.connections import HttpProtocol, WebSocketProtocol
from services.scheduler.cycle import Scheduler
from services.scheduler.database import Database
from services.scheduler.dispatch import Dispatcher
from services.scheduler.fleet import Fleet
from shared.broker import Broker, Consumer
from shared.jobs import transitions
from shared.messages import WorkerCapacity, WorkerHeartbeat
from shared.outbox import Outbox
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, auth, wait_for
from tests.e2e.conftest import free_port


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def queue_counts(broker: Broker, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of ``queue``; None while it does not exist."""
    channel = await broker._connection.channel()  # type: ignore[union-attr]
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:  # closes the channel
        return None
    await channel.close()
    result = declared.declaration_result
    return int(result.message_count or 0), int(result.consumer_count or 0)


@contextlib.asynccontextmanager
async def served(app: object) -> AsyncIterator[str]:
    """``app`` (its lifespan already running) behind a real HTTP server, as
    ``127.0.0.1:<port>`` (WebSocket handshakes need one)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off",  # type: ignore[arg-type]
                            log_level="warning", http=HttpProtocol, ws=WebSocketProtocol)  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        if serving.done():
            serving.result()  # it failed to start: say why
        return bool(server.started)

    await wait_for(started, timeout=10, what="the test's HTTP server to listen")
    try:
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (admin key by default; pass headers to act as others)."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://switchyard.test", headers=auth(ADMIN_KEY)
    ) as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database, for assertions on rows."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    yield conn
    await conn.close()


@dataclass
class Placement:
    """The scheduler's real placement (``Dispatcher``, one ``place`` call being one
    cycle's) on the test's database and broker, with workers the test registers."""

    fleet: Fleet
    dispatcher: Dispatcher

    def worker(
        self, worker_id: str, *, cpu: float, memory_mb: int, types: list[str], slots: int = 4
    ) -> None:
        """A heartbeat from a live worker with nothing running (as the cycle applies it)."""
        self.fleet.register_heartbeat(
            WorkerHeartbeat(
                worker_id=worker_id,
                capacity=WorkerCapacity(cpu_units=cpu, memory_mb=memory_mb, slots=slots),
                allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=0),
                task_types=types,
            )
        )


@pytest.fixture
async def placement(settings: Settings) -> AsyncIterator[Placement]:
    db = Database(settings)
    broker = Broker(settings.amqp_url, settings.namespace, name="test-placement")
    async with db.open(), broker:
        outbox = Outbox(broker, linger=0.0)
        outbox.start()
        fleet = Fleet(settings, db, outbox, rng=random.Random(0))
        dispatcher = Dispatcher(settings, db, broker, outbox, fleet)
        await dispatcher.take_over()
        yield Placement(fleet, dispatcher)
        stop = asyncio.Event()
        stop.set()  # a clean stop: refused dispatches are put back
        await dispatcher.settle(stop=stop)
        await outbox.close()


async def fail_queued_dependents(db: asyncpg.Connection) -> list[int]:
    """What the scheduler does a slice per cycle (none runs in these tests): fail the
    dependents a cascade left queued, until none are; the failures of each slice."""
    sizes: list[int] = []
    while True:
        async with db.transaction():
            events, left = await transitions.fail_queued_dependents(db)
        sizes.append(len(events))
        if not left:
            return sizes
        assert len(sizes) < 1000, "the queue never empties"


async def stop_scheduler(scheduler: Scheduler, consumer: Consumer) -> None:
    """What a test that drives the scheduler's cycle itself started: its consumer, the
    dispatches it awaits confirmation of, its outbox."""
    await consumer.close()
    stop = asyncio.Event()
    stop.set()
    await scheduler.dispatch.settle(stop)
    await scheduler.outbox.close()
