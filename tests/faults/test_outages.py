"""Database and broker outages, through a TCP proxy that the test cuts and restores."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Stack
from tests.faults.proxy import TcpProxy
from tests.faults.services import api_and

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow_fault,
    # Sockets the proxy aborts mid-stream are reported by the garbage collector at odd
    # moments; they are the test harness's, not the services'.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def stack_with(
    start_service, settings, request, env: dict[str, str], threads: int
) -> tuple[Stack, str]:  # type: ignore[no-untyped-def]
    """api, scheduler, logger and worker w1, all started with ``env`` (the proxied URL)."""
    stack = api_and(start_service, settings, request, env, "scheduler", "logger")
    stack.start("worker", "--worker-id", "w1", "--threads", str(threads), env=env)
    stack.wait_for(lambda: stack.worker_alive("w1"), what="worker up")
    return stack, stack.url


def test_database_outage_10_s(start_service, settings, request) -> None:  # type: ignore[no-untyped-def]
    with TcpProxy("127.0.0.1", 5432) as proxy:
        via_proxy = settings.database_url.replace(":5432/", f":{proxy.port}/")
        stack, url = stack_with(
            start_service, settings, request, {"DATABASE_URL": via_proxy}, threads=8
        )
        before = [
            stack.submit({"type": "demo.sleep", "payload": {"seconds": 1}}) for _ in range(10)
        ]
        stack.wait_for(
            lambda: (
                stack.sql("SELECT count(*) AS n FROM jobs WHERE status = 'running'")[0]["n"] > 0
            ),
            what="running",
        )

        proxy.cut()
        cut_at = time.monotonic()
        answers = []
        while time.monotonic() - cut_at < 10:
            t0 = time.monotonic()
            r = httpx.post(f"{url}/jobs", json={"type": "demo.echo"}, headers=AUTH, timeout=15)
            answers.append((r.status_code, time.monotonic() - t0, r.text))
            time.sleep(0.5)
        health = httpx.get(f"{url}/healthz", timeout=15)
        proxy.restore()

        assert {a[0] for a in answers} == {503}, answers
        assert all("database is unavailable" in a[2] for a in answers)
        assert max(a[1] for a in answers) < 6.0, answers  # fast, never hanging
        assert health.status_code == 503 and health.json()["database"].startswith("unavailable")

        # Everything reconnects by itself: new work flows and the old work ends.
        def accepted() -> bool:
            return (
                httpx.post(
                    f"{url}/jobs",
                    json={"type": "demo.echo", "name": "after"},
                    headers=AUTH,
                    timeout=15,
                ).status_code
                == 201
            )

        stack.wait_for(accepted, timeout=30, what="the API accepts jobs again")
        for j in before:
            stack.wait_status(j["id"], "completed", "failed", "retrying", timeout=60)
        stack.wait_for(lambda: not stack.sql("SELECT id FROM jobs WHERE status IN ('running', 'ready', 'retrying', 'pending')"),
                       timeout=60, what="every job terminal")  # fmt: skip
        # No job is marked done without its commit: every completed job has its history.
        stack.wait_for(lambda: not stack.sql(
            "SELECT j.id FROM jobs j LEFT JOIN job_executions e ON e.job_id = j.id AND e.attempt = j.attempts"
            " WHERE j.status = 'completed' AND (e.status IS DISTINCT FROM 'completed')"), timeout=30, what="history")  # fmt: skip
        assert (
            stack.sql(
                "SELECT count(*) AS n FROM jobs WHERE name = 'after' AND status = 'completed'"
            )[0]["n"]
            >= 1
        )


def test_broker_outage_during_1000_submissions(start_service, settings, request) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    import websockets

    with TcpProxy("127.0.0.1", 5672) as proxy:
        env = {
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
            "SWITCHYARD_HEARTBEAT_SECONDS": "2",
            "SWITCHYARD_WORKER_LEASE_SECONDS": "10",
        }
        stack, url = stack_with(start_service, settings, request, env, threads=16)

        def submit(i: int) -> tuple[int, float]:
            t0 = time.monotonic()
            r = httpx.post(
                f"{url}/jobs",
                json={"type": "demo.echo", "payload": {"i": i}},
                headers=AUTH,
                timeout=30,
            )
            return r.status_code, time.monotonic() - t0

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(submit, range(200)))
            proxy.cut()  # 2 x the heartbeat period
            during = list(pool.map(submit, range(200, 400)))
            time.sleep(max(0.0, 4 - sum(d for _, d in during) / 8))
            proxy.restore()
            after = list(pool.map(submit, range(400, 1000)))
        answers = first + during + after
        assert {code for code, _ in answers} <= {201, 503}
        assert max(d for _, d in answers) < 10, max(d for _, d in answers)  # bounded, never hanging
        accepted = sum(1 for code, _ in answers if code == 201)
        assert (
            stack.sql("SELECT count(*) AS n FROM jobs")[0]["n"] == accepted
        )  # a 503 wrote nothing
        # Every accepted job ends, so every consumer came back (scheduler, worker, logger).
        stack.wait_for(lambda: stack.sql("SELECT count(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"] == accepted,
                       timeout=120, what="every accepted job completed")  # fmt: skip

        def recorded() -> bool:
            return (
                stack.sql("SELECT count(*) AS n FROM job_executions WHERE status = 'completed'")[0][
                    "n"
                ]
                == accepted
            )

        try:
            stack.wait_for(recorded, timeout=60, what="every execution recorded")
        except AssertionError:
            detail = stack.sql("SELECT status, count(*) AS n FROM job_executions GROUP BY status")
            missing = stack.sql(
                "SELECT j.id, j.attempts, j.worker_id FROM jobs j LEFT JOIN job_executions e"
                " ON e.job_id = j.id AND e.status = 'completed' WHERE e.job_id IS NULL LIMIT 5"
            )
            raise AssertionError(
                f"executions {[dict(r) for r in detail]}; without one: {[dict(r) for r in missing]}"
            ) from None
        # Dispatches the outage swallowed cost an attempt number (the fence moves on) but
        # no job ran twice: one started execution per job.
        twice = stack.sql(
            "SELECT job_id FROM job_executions WHERE started_at IS NOT NULL GROUP BY job_id HAVING count(*) > 1"
        )
        assert twice == []

        # The API's stream consumer came back too.
        async def watch() -> str:
            async with websockets.connect(
                url.replace("http", "ws") + f"/jobs/stream?token={ADMIN_KEY}&type=demo.log"
            ) as ws:
                await asyncio.to_thread(stack.submit, {"type": "demo.log", "payload": {"lines": 1}})
                async with asyncio.timeout(20):
                    while True:
                        e = orjson.loads(await ws.recv())
                        if e["event"] == "state" and e["data"]["new_status"] == "completed":
                            return str(e["data"]["new_status"])

        assert asyncio.run(watch()) == "completed"
