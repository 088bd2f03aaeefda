"""Database and broker outages, through a TCP proxy that the test cuts and restores."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Stack, free_port, wait_http_ok
from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_database_outage_10_s(start_service, settings, request) -> None:  # type: ignore[no-untyped-def]
    with TcpProxy("127.0.0.1", 5432) as proxy:
        via_proxy = settings.database_url.replace(":5432/", f":{proxy.port}/")
        port = free_port()
        env = {"DATABASE_URL": via_proxy, "SWITCHYARD_API_PORT": str(port)}
        api = start_service("api", env=env)
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/healthz", api)
        stack = Stack(start_service, url, settings.database_url)
        request.addfinalizer(stack.http.close)
        stack.start("scheduler", env=env)
        stack.start("logger", env=env)
        stack.start("worker", "--worker-id", "w1", "--threads", "8", env=env)
        stack.wait_for(lambda: stack.worker_alive("w1"), what="worker up")
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
