"""The Outbox publishes in order in the background; with a linger, what is put during it
travels in one batch body (one delivery instead of one per put). When the broker is
unreachable it drops what it cannot publish, or with ``retry`` publishes it, in order,
once the broker is back (a worker's reports exist nowhere else)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.bodies import fold_starts
from shared.broker import Broker, Consumer, Delivery
from shared.errors import BrokerUnavailable
from shared.messages import (
    JobLog,
    JobStateChanged,
    JobStatusReport,
    WorkerCapacity,
    WorkerHeartbeat,
)
from shared.outbox import Outbox
from shared.settings import Settings
from tests.conftest import AMQP_URL, wait_for
from tests.faults.proxy import TcpProxy


def event(job: uuid.UUID) -> JobStateChanged:
    return JobStateChanged(
        job_id=job, type="t", old_status="ready", new_status="running", attempt=1
    )


@contextlib.asynccontextmanager
async def job_state_bodies(
    settings: Settings,
) -> AsyncIterator[tuple[Broker, list[list[uuid.UUID]]]]:
    """A sending broker, and the job ids of each ``job.state`` body a consumer receives
    (one list per delivery)."""
    ns = settings.namespace
    async with (
        Broker(settings.amqp_url, ns, name="sender") as sender,
        Broker(settings.amqp_url, ns, name="receiver") as receiver,
    ):
        deliveries: list[list[uuid.UUID]] = []

        async def on(delivery: Delivery) -> None:
            deliveries.append([m.job_id for m in delivery.messages])

        consumer = await receiver.consume(
            f"{ns}.outbox-test", ["job.state.#"], on, no_ack=True, auto_delete=True
        )
        try:
            yield sender, deliveries
        finally:
            await consumer.close()
            await sender.delete_namespace()


async def arrive(deliveries: list[list[uuid.UUID]], jobs: list[uuid.UUID], what: str) -> None:
    async def arrived() -> bool:
        return sum(len(d) for d in deliveries) >= len(jobs)

    await wait_for(arrived, timeout=10, what=what)


@pytest.mark.parametrize("linger", [0.0, 0.3])
async def test_linger_gathers_puts_into_one_delivery(settings: Settings, linger: float) -> None:
    async with job_state_bodies(settings) as (sender, deliveries):
        outbox = Outbox(sender, linger=linger)
        outbox.start()
        jobs = [uuid.uuid4() for _ in range(3)]
        for job in jobs:
            outbox.put([event(job)])
            # A moment between puts (well inside the linger): without one, each goes out
            # before the next is put.
            await asyncio.sleep(0.05)
        await arrive(deliveries, jobs, "the three events arrive")
        assert [j for d in deliveries for j in d] == jobs  # in order, none lost
        assert len(deliveries) == (1 if linger else 3)
        await outbox.close()


async def test_hurry_sends_what_waits_without_the_rest_of_the_linger(settings: Settings) -> None:
    """A linger far longer than the test: what was put goes at once when the producer
    says nothing more is coming, still as one body; the next put lingers again."""
    async with job_state_bodies(settings) as (sender, deliveries):
        outbox = Outbox(sender, linger=60.0)
        outbox.start()
        outbox.hurry()  # nothing waits: it changes nothing
        jobs = [uuid.uuid4() for _ in range(3)]
        for job in jobs:
            outbox.put([event(job)])
            await asyncio.sleep(0.01)
        assert outbox.waiting() == 3
        outbox.hurry()
        await arrive(deliveries, jobs, "the hurried events arrive")
        assert deliveries == [jobs]
        outbox.hurry()  # nothing waits again
        outbox.put([event(uuid.uuid4())])
        await asyncio.sleep(0.5)
        assert len(deliveries) == 1 and outbox.waiting() == 1  # lingering again
        await outbox.close(timeout=0.1)


def report(job: uuid.UUID) -> JobStatusReport:
    return JobStatusReport(job_id=job, attempt=1, worker_id="w1", status="started")


def heartbeat() -> WorkerHeartbeat:
    capacity = WorkerCapacity(cpu_units=1, memory_mb=1, slots=1)
    return WorkerHeartbeat(worker_id="w1", state="alive", capacity=capacity, allocated=capacity)


@contextlib.asynccontextmanager
async def sent_and_received(
    settings: Settings, queue: str, bindings: list[str]
) -> AsyncIterator[tuple[Broker, list[Any]]]:
    """A sender, and the list of every message a consumer bound to ``bindings`` receives
    (the namespace is deleted afterwards)."""
    ns = settings.namespace
    async with (
        Broker(settings.amqp_url, ns, name="sender") as sender,
        Broker(settings.amqp_url, ns, name="receiver") as receiver,
    ):
        got: list[Any] = []

        async def on(delivery: Delivery) -> None:
            got.extend(delivery.messages)

        consumer = await receiver.consume(
            f"{ns}.{queue}", bindings, on, no_ack=True, auto_delete=True
        )
        try:
            yield sender, got
        finally:
            await consumer.close()
            await sender.delete_namespace()


@contextlib.asynccontextmanager
async def sender_behind_a_proxy(
    namespace: str,
) -> AsyncIterator[tuple[TcpProxy, Broker, list[uuid.UUID], Consumer]]:
    """A sender whose link to the broker goes through a proxy the test cuts and
    restores, and the job ids of the ``job.status`` messages a direct receiver got."""
    broker_url = urlsplit(AMQP_URL)
    with TcpProxy(broker_url.hostname or "127.0.0.1", broker_url.port or 5672) as proxy:
        netloc = f"{broker_url.username}:{broker_url.password}@127.0.0.1:{proxy.port}"
        # Reconnect soon after the restore (the default waits 5 s).
        via_proxy = broker_url._replace(netloc=netloc, query="reconnect_interval=0.2").geturl()
        async with (
            Broker(via_proxy, namespace, name="sender", publish_timeout=0.5) as sender,
            Broker(AMQP_URL, namespace, name="receiver") as receiver,
        ):
            received: list[uuid.UUID] = []

            async def on(delivery: Delivery) -> None:
                received.extend(m.job_id for m in delivery.messages)

            consumer = await receiver.consume(
                f"{namespace}.outbox-test", ["job.status.#"], on, no_ack=True, auto_delete=True
            )
            yield proxy, sender, received, consumer


# The proxy aborts the sender's socket mid-stream; the garbage collector reports it at
# odd moments (the test harness's socket, not the outbox's).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("retry", [True, False])
async def test_a_publish_that_fails_is_retried_in_order_or_dropped(
    namespace: str, caplog: pytest.LogCaptureFixture, retry: bool
) -> None:
    jobs = [uuid.uuid4() for _ in range(4)]
    async with sender_behind_a_proxy(namespace) as (proxy, sender, received, consumer):
        outbox = Outbox(sender, retry=retry)
        outbox.start()

        async def arrived(job: uuid.UUID) -> bool:
            return job in received

        outbox.put([report(jobs[0])])
        await wait_for(lambda: arrived(jobs[0]), what="the first report")

        proxy.cut()
        outbox.put([report(jobs[1])])
        outbox.put([report(jobs[2])])

        async def publish_failed() -> bool:  # the outbox says so, whatever its rule
            return any(r.name == "shared.outbox" for r in caplog.records)

        await wait_for(publish_failed, what="the outbox's log line of a failed publish")
        proxy.restore()

        async def reconnected() -> bool:
            try:  # a heartbeat: the test's queue is not bound to it
                await sender.publish(heartbeat())
            except BrokerUnavailable:
                return False
            return True

        await wait_for(reconnected, what="the sender reconnected")
        outbox.put([report(jobs[3])])
        await wait_for(lambda: arrived(jobs[3]), what="the report put after the outage")
        await outbox.close()
        await consumer.close()

    # In order, so what is missing once the last one is in was dropped.
    assert received == (jobs if retry else [jobs[0], jobs[3]])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_producer_thread_waits_while_what_is_unsent_weighs_too_much(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``wait_for_room`` holds a thread while the broker cannot take what waits (here
    three messages of weight 1 against a budget of 2), lets it go once they are
    published, never holds the event loop itself, and lets go at close."""
    jobs = [uuid.uuid4() for _ in range(6)]
    async with sender_behind_a_proxy(namespace) as (proxy, sender, received, consumer):
        outbox = Outbox(sender, retry=True, weigh=lambda m: 1, max_weight=2)
        outbox.ROOM_POLL_SECONDS = 60.0  # let go by being told, not by looking again
        outbox.start()

        def held_producer() -> threading.Event:
            let_go = threading.Event()

            def produce() -> None:
                outbox.wait_for_room()
                let_go.set()

            threading.Thread(target=produce, daemon=True).start()
            return let_go

        proxy.cut()
        outbox.put([report(job) for job in jobs[:3]])
        assert outbox.weight == 3
        first = held_producer()

        async def publish_failed() -> bool:
            return any(r.name == "shared.outbox" for r in caplog.records)

        await wait_for(publish_failed, what="the outbox's log line of a failed publish")
        assert not first.is_set(), "the producer went on while the broker took nothing"
        outbox.wait_for_room()  # on the loop: returns, or the test would hang here
        proxy.restore()

        async def first_let_go() -> bool:
            return first.is_set()

        await wait_for(first_let_go, what="the producer let go once the broker took them")

        async def arrived() -> bool:
            return received == jobs[:3]

        await wait_for(arrived, what="the three reports, in order")
        assert outbox.weight == 0

        proxy.cut()
        outbox.put([report(job) for job in jobs[3:]])
        second = held_producer()
        await outbox.close(timeout=0.5)

        async def second_let_go() -> bool:
            return second.is_set()

        await wait_for(second_let_go, what="the producer let go at close")
        await consumer.close()


async def test_a_message_that_cannot_be_published_does_not_stop_the_outbox(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's outbox (retry=True) with a message no broker takes in front of a
    heartbeat: the message is logged and dead-lettered, the heartbeat goes out, and the
    publisher lives on (it used to die of a TypeError, or retry the message forever)."""
    from shared.messages import MAX_MESSAGE_BYTES, JobLog

    bindings = ["worker.heartbeat.#", "job.logs.#"]
    async with sent_and_received(settings, "outbox-poison", bindings) as (sender, got):
        outbox = Outbox(sender, linger=0.0, retry=True, chunk=500)
        task = outbox.start()
        job = uuid.uuid4()
        # Built without validation, as a bug would build them: text no encoder takes,
        # and a body over the limit.
        unencodable = JobLog.model_construct(
            job_id=job, attempt=1, seq=1, level="info", message="bad \udcff"
        )
        oversize = JobLog.model_construct(
            job_id=job, attempt=1, seq=2, level="info", message="x" * (MAX_MESSAGE_BYTES + 1)
        )
        fine = JobLog(job_id=job, attempt=1, seq=3, level="info", message="fine")
        outbox.put([unencodable, oversize, fine, heartbeat()])

        async def beat_arrived() -> bool:
            return any(isinstance(m, WorkerHeartbeat) for m in got)

        await wait_for(beat_arrived, timeout=10, what="the heartbeat behind the poison")
        assert [m.seq for m in got if isinstance(m, JobLog)] == [3]
        assert not task.done()
        letters = await sender.read_dead_letters()
        assert len(letters) == 2, letters
        assert all("unpublishable" in (d.reason or "") for d in letters)
        await outbox.close()


async def test_a_message_that_breaks_the_publisher_is_dead_lettered_not_dropped(
    settings: Settings,
) -> None:
    """A message whose publish raises an error that is not the broker's (a bug: here a
    report built without validation and without a job id, so no routing key can be made
    for it) is dead-lettered with the error, and the heartbeat behind it goes out."""
    bindings = ["worker.heartbeat.#", "job.status.#"]
    async with sent_and_received(settings, "outbox-bug", bindings) as (sender, got):
        outbox = Outbox(sender, linger=0.0, retry=True)
        task = outbox.start()
        broken = JobStatusReport.model_construct(attempt=7777, worker_id="w1", status="completed")
        outbox.put([broken, heartbeat()])

        async def beat_arrived() -> bool:
            return any(isinstance(m, WorkerHeartbeat) for m in got)

        await wait_for(beat_arrived, timeout=10, what="the heartbeat behind the broken report")

        async def dead_lettered() -> list:
            return await sender.read_dead_letters()

        (letter,) = await wait_for(dead_lettered, timeout=10, what="the report dead-lettered")
        assert "7777" in letter.body.decode(), letter.body
        assert "AttributeError" in (letter.reason or ""), letter.reason
        assert not task.done()
        await outbox.close()


async def test_compact_rewrites_a_chunk_and_a_failing_one_changes_nothing(
    settings: Settings,
) -> None:
    """A worker's outbox folds a short attempt's start into its end (one report reaches
    the consumers); a compact step that raises (a bug) leaves the chunk as it was: every
    message still goes, and the outbox goes on."""
    async with sent_and_received(settings, "compact-test", ["job.status.#"]) as (sender, got):

        def broken(chunk: list[Any]) -> list[Any]:
            raise RuntimeError("a bug in the compact step")

        for compact, expected in ((fold_starts, 1), (broken, 2)):
            got.clear()
            job = uuid.uuid4()
            outbox = Outbox(sender, linger=0.2, retry=True, compact=compact)
            outbox.start()
            outbox.put([JobStatusReport(job_id=job, attempt=1, worker_id="w", status="started")])
            outbox.put([JobStatusReport(job_id=job, attempt=1, worker_id="w", status="completed")])

            async def arrived(n: int = expected) -> bool:
                return len(got) >= n

            await wait_for(arrived, timeout=10, what="the reports arrive")
            await outbox.close()
            if expected == 1:
                (folded,) = got
                assert folded.status == "completed" and folded.started_at is not None
            else:
                assert [r.status for r in got] == ["started", "completed"]
                assert all(r.started_at is None for r in got)


async def test_a_workers_jobs_that_logged_and_ended_reach_the_broker_as_two_bodies(
    settings: Settings,
) -> None:
    """The real worker's outbox (``kinds_together``): 20 jobs that each logged a line and
    ended, put in one go, are two deliveries (a batch of lines, a batch of reports), not
    40; each job's line still arrives before its report."""
    from services.worker.worker import Worker
    from switchyard.tasks import TaskRegistry

    worker = Worker(settings=settings, registry=TaskRegistry(), worker_id="w1", threads=2,
                    cpu_units=1, memory_mb=64)  # fmt: skip
    ns = settings.namespace
    async with worker.broker, Broker(settings.amqp_url, ns, name="receiver") as receiver:
        deliveries: list[list[Any]] = []

        async def on(delivery: Delivery) -> None:
            deliveries.append(delivery.messages)

        consumer = await receiver.consume(
            f"{ns}.worker-chunk-test", ["job.logs.#", "job.status.#"], on, no_ack=True,
            auto_delete=True,
        )  # fmt: skip
        worker.outbox.start()
        jobs = [uuid.uuid4() for _ in range(20)]
        for job in jobs:
            worker.outbox.put(
                [JobLog(job_id=job, attempt=1, seq=1, level="info", message="a line")]
            )
            worker.outbox.put(
                [JobStatusReport(job_id=job, attempt=1, worker_id="w1", status="completed")]
            )

        async def all_arrived() -> bool:
            return sum(len(d) for d in deliveries) >= 2 * len(jobs)

        await wait_for(all_arrived, timeout=10, what="the lines and reports arrive")
        await worker.outbox.close()
        await consumer.close()
        await worker.broker.delete_namespace()
    assert len(deliveries) == 2, [len(d) for d in deliveries]
    arrived = [(type(m).__name__, m.job_id) for d in deliveries for m in d]
    for job in jobs:
        assert arrived.index(("JobLog", job)) < arrived.index(("JobStatusReport", job))
