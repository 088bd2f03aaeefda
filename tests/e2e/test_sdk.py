"""The SDK against a real API process: its own types in, typed answers out, and bounded
retries of 429 after ``Retry-After``."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from uuid import UUID

import pytest

from switchyard import ApiError, AsyncClient, Client, JobStatus
from switchyard.models import Event
from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Stack, free_port, wait_http_ok

# Wall-clock bounds (CPU-bound pairs, start and takeover times, a rate limit's pace)
# that another test's services on the same two cores would stretch.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def test_the_sdk_takes_its_own_types_and_reports_progress(stack: Stack) -> None:
    stack.worker("w1")
    with Client(stack.url, ADMIN_KEY) as sy:
        first = sy.enqueue_job("demo.progress", {"steps": 4, "delay_seconds": 0.25})
        second = sy.enqueue_job(
            "demo.echo",
            {"after": first.id},  # a UUID inside the payload too
            depends_on=[first],  # a job object
            run_at=datetime.now() + timedelta(seconds=0.5),  # naive: local time
            name="second",
        )
        assert isinstance(second.id, UUID) and second.depends_on == [first.id]
        assert second.payload == {"after": str(first.id)}
        seen: list[dict] = []
        done = sy.wait(first.id, timeout=30, on_progress=lambda j: seen.append(j.progress))
        assert done.status == JobStatus.COMPLETED and done.result == {"steps": 4}
        assert seen and all(p is not None for p in seen)
        assert [p["done"] for p in seen] == sorted({p["done"] for p in seen}), "once per change"
        assert sy.wait(second, timeout=30).result == {"after": str(first.id)}
        events = []
        for event in sy.stream(job_ids=[first], replay=True):
            assert isinstance(event, Event)
            events.append(event)
            if event.event == "state" and event.data.get("replay"):
                break
        assert events[-1].data["new_status"] == "completed"
        assert [e.data["message"] for e in events if e.event == "log"][-1] == "step 4 of 4"
        stack.wait_for(  # the logger writes executions in batches, after the scheduler
            lambda: sy.logs(str(first.id)).executions[0].status == "completed",
            what="the logger wrote the execution",
        )


def test_async_client_does_what_the_client_does(stack: Stack) -> None:
    stack.worker("w1")

    async def use() -> None:
        async with AsyncClient(stack.url, ADMIN_KEY) as sy:
            jobs = await sy.submit_batch(
                [
                    {"ref": "a", "type": "demo.echo", "payload": {"x": 1}},
                    {"ref": "b", "type": "demo.echo", "payload": {"x": 2}, "depends_on": ["@a"]},
                ]
            )
            done = await sy.wait(jobs[1], timeout=30)
            assert done.result == {"x": 2}
            listed = [j.id async for j in sy.list_jobs(type="demo.echo", page_size=1)]
            assert sorted(listed) == sorted(j.id for j in jobs)
            assert (await sy.raw("GET", f"/jobs/{jobs[0].id}"))["status"] == "completed"
            with pytest.raises(ApiError) as refused:
                await sy.retry(jobs[0])
            assert refused.value.status == 409

    asyncio.run(use())


def test_429_is_retried_after_retry_after_and_the_retries_are_bounded(
    start_service: object,
) -> None:
    port = free_port()
    api = start_service(  # type: ignore[operator]
        "api",
        env={
            "SWITCHYARD_API_PORT": str(port),
            "SWITCHYARD_RATE_LIMIT_KEY_PER_SECOND": "2",
            "SWITCHYARD_RATE_LIMIT_KEY_BURST": "1",
        },
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", api)
    with Client(url, ADMIN_KEY, retries=0) as impatient:
        impatient.raw("GET", "/stats")
        with pytest.raises(ApiError) as limited:
            impatient.raw("GET", "/stats")
        assert limited.value.status == 429
    with Client(url, ADMIN_KEY, retries=5, max_retry_wait=2) as patient:
        started = time.monotonic()
        for _ in range(4):
            patient.raw("GET", "/stats")  # each one past the first waits for a token
        took = time.monotonic() - started
    # 2 tokens a second, burst 1: four calls need about 1.5 s of waiting, not zero.
    assert 1.0 <= took < 15, took
