"""No single broker message or task output stops a service (issue 17, items 3, 4, 14).

Real processes: a poison message on the broker is dead-lettered with its reason and
the yard goes on placing and completing jobs; a task's bad text or oversize result
fails that attempt (or is made safe) while its worker stays alive and heartbeating;
a dispatch stamped by a clock an hour away is run, not handed back.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from shared.broker import Broker, DeadLetter, Delivery
from shared.messages import (
    MAX_RESULT_BYTES,
    JobDispatch,
    JobStatusReport,
    ResourceSpec,
    WorkerCapacity,
    WorkerHeartbeat,
    dispatch_key,
    encode,
)
from shared.settings import Settings
from tests.e2e.conftest import ServiceProcess, Stack

TASKS = ("--tasks", "tests.e2e.sample_tasks")


def publish_bodies(settings: Settings, bodies: list[tuple[bytes, str]]) -> None:
    async def run() -> None:
        async with Broker(settings.amqp_url, settings.namespace, name="test-poison") as broker:
            for body, key in bodies:
                await broker.publish_body(body, key)

    asyncio.run(run())


def dead_letters(settings: Settings, at_least: int, timeout: float = 20.0) -> list[DeadLetter]:
    async def run() -> list[DeadLetter]:
        async with Broker(settings.amqp_url, settings.namespace, name="test-dead") as broker:
            deadline = time.monotonic() + timeout
            while True:
                found = await broker.read_dead_letters(limit=100, remove=False)
                if len(found) >= at_least or time.monotonic() > deadline:
                    return found
                await asyncio.sleep(0.2)

    return asyncio.run(run())


def hostile(message: object, **changes: object) -> bytes:
    """``message``'s body with fields no column or encoder takes (the stdlib writes
    huge integers as they are)."""
    body = json.loads(encode(message))  # type: ignore[arg-type]
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p) if p.isdigit() else p]
        target[last] = value
    return json.dumps(body).encode()


def alive(proc: ServiceProcess) -> bool:
    return proc.proc.poll() is None


def test_poison_reports_and_heartbeats_do_not_stop_the_scheduler(
    stack: Stack, settings: Settings
) -> None:
    stack.worker("w1")
    job = uuid.uuid4()
    report = JobStatusReport(job_id=job, attempt=1, worker_id="w1", status="completed")
    cap = WorkerCapacity(cpu_units=64, memory_mb=1024, slots=8)
    beat = WorkerHeartbeat(worker_id="huge", capacity=cap, allocated=cap, task_types=["demo.echo"])
    publish_bodies(
        settings,
        [
            (hostile(report, result={"n": 2**64}), f"job.status.{job}"),
            (hostile(report, attempt=2**31), f"job.status.{job}"),
            (hostile(report, status="failed", attempt=2**31, error="x"), f"job.status.{job}"),
            (hostile(beat, capacity__memory_mb=2**31), "worker.heartbeat.huge"),
        ],
    )
    done = stack.submit({"type": "demo.echo", "payload": {"after": "poison"}})
    assert stack.wait_status(done["id"], "completed")["result"] == {"after": "poison"}
    assert alive(stack.scheduler)  # type: ignore[attr-defined]
    assert alive(stack.logger)  # type: ignore[attr-defined]
    dead = dead_letters(settings, at_least=4)
    reasons = [d.reason or "" for d in dead]
    # Each poison body is dead-lettered once by each consumer it reached (the logger
    # also takes job.status), with what was wrong with it.
    assert sum("result" in r for r in reasons) >= 1, reasons
    assert sum("attempt" in r for r in reasons) >= 2, reasons
    assert any("memory_mb" in r for r in reasons), reasons
    assert {d.queue for d in dead} >= {f"{settings.namespace}.scheduler"}
    # Nothing was placed on the worker the poison heartbeat described.
    assert not stack.sql("SELECT 1 FROM workers WHERE id = 'huge'")


def test_a_message_the_database_refuses_is_isolated_and_dead_lettered(
    stack: Stack, settings: Settings
) -> None:
    """A message that passes the schema but that the database still refuses (here a
    CHECK constraint stands in for any such value) does not hold the cycle: the rest is
    applied, placement goes on, and the message is dead-lettered after a few tries."""
    stack.sql("ALTER TABLE workers ADD CONSTRAINT refuse_one CHECK (id <> 'refused')")
    stack.worker("w1")
    cap = WorkerCapacity(cpu_units=1, memory_mb=64, slots=1)
    beat = WorkerHeartbeat(worker_id="refused", capacity=cap, allocated=cap, task_types=[])
    publish_bodies(settings, [(encode(beat), "worker.heartbeat.refused")])
    job = stack.submit({"type": "demo.echo", "payload": {"x": 1}})
    stack.wait_status(job["id"], "completed")
    dead = dead_letters(settings, at_least=1)
    # Only what must be there: a dispatch expiring in a worker's queue also lands in
    # <ns>.dead-letter (reason None, from RabbitMQ).
    refused = [d for d in dead if d.routing_key == "worker.heartbeat.refused"]
    assert len(refused) == 1, [(d.routing_key, d.reason) for d in dead]
    assert "refuse_one" in (refused[0].reason or ""), refused[0].reason
    ours = [d for d in dead if d.reason is not None]
    assert ours == refused, [(d.routing_key, d.reason) for d in ours]
    assert alive(stack.scheduler)  # type: ignore[attr-defined]


def test_text_no_encoder_takes_is_replaced_and_the_worker_lives(stack: Stack) -> None:
    worker = stack.worker("w1", *TASKS)
    job = stack.submit({"type": "sample.bad_text", "payload": {}})
    failed = stack.wait_status(job["id"], "failed")
    assert "cannot open report-\ufffd.txt" in failed["error"]

    def line_stored() -> bool:
        return bool(stack.logs(job["id"])["lines"])

    stack.wait_for(line_stored, what="the log line stored")
    assert stack.logs(job["id"])["lines"][0]["message"] == "opening report-\ufffd.txt"
    assert alive(worker)
    after = stack.submit({"type": "sample.greet", "payload": {"name": "again"}})
    stack.wait_status(after["id"], "completed")


def test_an_oversize_result_fails_the_attempt_and_the_worker_keeps_beating(
    stack: Stack,
) -> None:
    worker = stack.worker("w1", *TASKS)
    job = stack.submit({"type": "sample.big_result", "payload": {"chars": MAX_RESULT_BYTES + 1}})
    failed = stack.wait_status(job["id"], "failed")
    assert "result" in failed["error"] and f"{MAX_RESULT_BYTES:,}" in failed["error"], failed
    assert failed["result"] is None
    assert alive(worker)
    beat = stack.sql("SELECT last_heartbeat_at FROM workers WHERE id = 'w1'")[0][0]
    stack.wait_for(
        lambda: stack.sql("SELECT last_heartbeat_at FROM workers WHERE id = 'w1'")[0][0] > beat,
        what="a later heartbeat",
    )
    assert stack.worker_alive("w1")
    after = stack.submit({"type": "sample.greet", "payload": {"name": "again"}})
    stack.wait_status(after["id"], "completed")


def test_a_dispatch_stamped_by_a_clock_an_hour_behind_is_run(
    start_service: object, settings: Settings
) -> None:
    """As if the worker's clock ran an hour ahead of the scheduler's: the dispatch's
    lease (10 s) is still whole, so the worker starts it instead of handing it back."""

    async def run() -> list[JobStatusReport]:
        statuses: list[JobStatusReport] = []
        async with Broker(settings.amqp_url, settings.namespace, name="test-clock") as broker:

            async def on(delivery: Delivery) -> None:
                statuses.extend(delivery.messages)
                await delivery.ack()

            queue = f"{settings.namespace}.test-status"
            consumer = await broker.consume(queue, ["job.status.#"], on, auto_delete=True)
            worker = start_service("worker", "--worker-id", "ahead")  # type: ignore[operator]
            deadline = time.monotonic() + 20
            while not statuses and time.monotonic() < deadline:  # wait until it consumes
                job = uuid.uuid4()
                sent = datetime.now(UTC) - timedelta(hours=1)
                dispatch = JobDispatch(
                    job_id=job, attempt=1, type="demo.echo", payload={"x": 1},
                    resources=ResourceSpec(cpu_units=0.1, memory_mb=16), timeout_seconds=None,
                    ts=sent, lease_expires_at=sent + timedelta(seconds=10),
                )  # fmt: skip
                await broker.publish(dispatch, dispatch_key("ahead", job))
                await asyncio.sleep(0.5)
            assert alive(worker), worker.output()
            await consumer.close()
        return statuses

    reports = asyncio.run(run())
    # The first report says the attempt started: on its own, or folded into its end.
    assert reports[0].start_time is not None, reports
    assert "handed_back" not in [r.status for r in reports]
