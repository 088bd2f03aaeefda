"""Delayed and periodic jobs, dead-letter retry, the SDK and the CLI on the real stack."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from shared.client import ApiError, AsyncClient, Client
from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Stack

# Wall-clock bounds (CPU-bound pairs, start and takeover times, a rate limit's pace)
# that another test's services on the same two cores would stretch.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_cron_every_second_fires_once_per_tick_with_two_schedulers(stack: Stack) -> None:
    stack.start("scheduler")  # a second one: it stands by, and may take over
    stack.worker("w1")
    r = stack.http.post(
        "/schedules",
        json={
            "name": "tick",
            "cron": "* * * * * *",
            "timezone": "UTC",
            "job": {"type": "demo.echo", "payload": {"tick": True}},
        },
    )
    assert r.status_code == 201, r.text
    sched = r.json()
    assert sched["next_run_at"] and sched["paused"] is False

    def fires() -> list[datetime]:
        rows = stack.sql(
            "SELECT idempotency_key FROM jobs WHERE idempotency_key LIKE $1",
            f"schedule:{sched['id']}:%",
        )
        return sorted(datetime.fromisoformat(r["idempotency_key"].split(":", 2)[2]) for r in rows)

    stack.wait_for(lambda: len(fires()) >= 6, timeout=20, what="six fires")
    paused = stack.http.patch(f"/schedules/{sched['id']}", json={"paused": True})
    assert paused.status_code == 200 and paused.json()["paused"] is True
    times = fires()
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert gaps == {1.0}, times  # one job per second: none missing, none twice
    jobs = stack.sql("SELECT count(*) AS n FROM jobs WHERE type = 'demo.echo'")
    assert jobs[0]["n"] == len(times)
    done = len(times)
    stack.wait_for(
        lambda: (
            stack.sql("SELECT count(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"]
            >= done - 1
        ),
        what="they run",
    )
    after_pause = len(fires())
    stack.wait_for(
        lambda: stack.job_count_stable(after_pause, fires), timeout=5, what="no fires while paused"
    )


def test_delayed_job_starts_no_earlier_than_run_at(stack: Stack) -> None:
    stack.worker("w1")
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    job = stack.submit({"type": "demo.echo", "run_at": run_at.isoformat()})
    assert job["status"] == "pending"
    done = stack.wait_status(job["id"], "completed", timeout=15)
    assert ts(done["started_at"]) >= run_at
    assert (ts(done["started_at"]) - run_at).total_seconds() < 1.5


def test_retry_of_a_failed_job_keeps_both_histories(stack: Stack) -> None:
    stack.worker("w1")
    job = stack.submit(
        {"type": "demo.fail", "payload": {"fail_times": 1}, "retry": {"max_attempts": 1}}
    )
    child = stack.submit({"type": "demo.echo", "depends_on": [job["id"]]})
    stack.wait_status(job["id"], "failed")
    assert stack.wait_status(child["id"], "failed")["error"] == f"dependency {job['id']} failed"
    assert [
        j["id"] for j in stack.http.get("/jobs", params={"status": "failed"}).json()["items"]
    ] == [child["id"], job["id"]]
    r = stack.http.post(f"/jobs/{job['id']}/retry", params={"dependents": True})
    assert r.status_code == 200, r.text
    done = stack.wait_status(job["id"], "completed")
    assert done["attempts"] == 2 and done["result"] == {"attempt": 2}
    assert stack.wait_status(child["id"], "completed")["id"] == child["id"]
    stack.wait_for(
        lambda: (
            [e["status"] for e in stack.logs(job["id"])["executions"]] == ["failed", "completed"]
        ),
        what="both histories",
    )
    again = stack.http.post(f"/jobs/{job['id']}/retry")
    assert again.status_code == 409 and "only failed or cancelled" in again.json()["detail"]


def test_sdk_against_the_stack(stack: Stack) -> None:
    stack.worker("w1")
    with Client(stack.url, ADMIN_KEY) as sy:
        job = sy.enqueue_job("demo.progress", {"steps": 3, "delay_seconds": 0.1}, priority="high")
        events = []
        for event in sy.stream(job_ids=[job], replay=True):
            events.append(event)
            if event.event == "state" and event.data["new_status"] == "completed":
                break
        assert [e.data["message"] for e in events if e.event == "log"] == [
            "step 1 of 3",
            "step 2 of 3",
            "step 3 of 3",
        ]
        done = sy.wait(job.id, timeout=10)
        assert done.status == "completed" and done.result == {"steps": 3}
        stack.wait_for(
            lambda: len(sy.logs(str(job.id)).lines) == 3, what="the logger wrote the lines"
        )
        assert [ln.message for ln in sy.logs(str(job.id)).lines][-1] == "step 3 of 3"
        more = [sy.enqueue_job("demo.echo", {"i": i}) for i in range(5)]
        listed = [j.id for j in sy.list_jobs(page_size=2, type="demo.echo")]
        assert listed == [j.id for j in reversed(more)]
        with pytest.raises(ApiError) as info:
            sy.enqueue_job("no.such.type")
        assert info.value.status == 422 and "unknown task type" in info.value.detail
        bad = sy.enqueue_job("demo.fail", {"fail_times": 1}, retry={"max_attempts": 1})
        assert sy.wait(str(bad.id), timeout=10).status == "failed"
        assert sy.retry(str(bad.id)).status in ("ready", "running", "completed")
        assert sy.wait(str(bad.id), timeout=10).status == "completed"
        slow = sy.enqueue_job("demo.sleep", {"seconds": 30})
        assert sy.cancel(str(slow.id)).status in ("cancelled", "running")
        assert sy.wait(str(slow.id), timeout=10).status == "cancelled"

    async def async_side() -> str:
        async with AsyncClient(stack.url, ADMIN_KEY) as sy:
            job = await sy.enqueue_job("demo.echo", {"async": True})
            return (await sy.wait(str(job.id), timeout=10)).status

    assert asyncio.run(async_side()) == "completed"


def test_cli_against_the_stack(stack: Stack) -> None:
    stack.worker("w1")
    env = {"SWITCHYARD_URL": stack.url, "SWITCHYARD_API_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchyard.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli(
        "--json",
        "submit",
        "demo.echo",
        "--payload",
        '{"x": 1}',
        "--priority",
        "high",
        "--cpu",
        "0.5",
        "--idempotency-key",
        "cli-1",
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["priority"] == "high" and job["resources"]["cpu_units"] == 0.5
    stack.wait_status(job["id"], "completed")
    status = cli("status", job["id"])
    assert "completed" in status.stdout and job["id"] in status.stdout
    listed = cli("list", "--type", "demo.echo")
    assert (
        listed.stdout.splitlines()[0].split()[:4] == ["ID", "TYPE", "NAME", "STATUS"]
        and job["id"] in listed.stdout
    )
    assert "w1" in cli("workers").stdout
    assert "jobs by status:" in cli("stats").stdout
    child = json.loads(cli("--json", "submit", "demo.echo", "--depends-on", job["id"]).stdout)
    assert child["depends_on"] == [job["id"]]
    slow = json.loads(cli("--json", "submit", "demo.sleep", "--payload", '{"seconds": 30}').stdout)
    stack.wait_status(slow["id"], "running")
    assert cli("cancel", slow["id"]).returncode == 0
    stack.wait_status(slow["id"], "cancelled")
    assert cli("retry", slow["id"]).returncode == 0
    stack.wait_status(slow["id"], "running")
    # Its second run is cancelled too (else the worker's drain waits it out at teardown).
    assert cli("cancel", slow["id"]).returncode == 0
    assert stack.wait_status(slow["id"], "cancelled")["attempts"] == 2
    made = cli(
        "--json",
        "schedules",
        "create",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--type",
        "demo.echo",
        "--timezone",
        "Europe/Paris",
    )
    assert made.returncode == 0, made.stderr
    sched = json.loads(made.stdout)
    assert ts(sched["next_run_at"]).astimezone(ts("2026-01-01T00:00:00+01:00").tzinfo).hour in (
        3,
        2,
    )
    assert "nightly" in cli("schedules", "list").stdout
    assert "paused" in cli("schedules", "pause", sched["id"]).stdout
    assert cli("schedules", "delete", sched["id"]).returncode == 0
    bad = cli("submit", "demo.sleep", "--payload", '{"seconds": "x"}')
    assert bad.returncode == 1 and "payload.seconds" in bad.stderr


def test_retention_deletes_finished_jobs_with_their_history(
    start_service: object, api_url: str, settings: object
) -> None:
    """A scheduler with a 3-second retention deletes a completed job (and its log lines
    and execution) once it finished 3 s ago, not before; a delayed job stays."""
    stack = Stack(start_service, api_url, settings.database_url)  # type: ignore[attr-defined]
    retention = 3.0
    stack.start(
        "scheduler",
        env={
            "SWITCHYARD_RETENTION_DAYS": str(retention / 86400),
            "SWITCHYARD_RETENTION_SWEEP_SECONDS": "0.2",
        },
    )
    stack.start("logger")
    stack.worker("w1")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting = stack.submit({"type": "demo.echo", "run_at": later})
    job = stack.submit({"type": "demo.log", "payload": {"lines": 3}})
    done = stack.wait_status(job["id"], "completed")
    stack.wait_for(
        lambda: stack.http.get(f"/jobs/{job['id']}").status_code == 404,
        timeout=30,
        what="the finished job deleted by the retention sweep",
    )
    gone_at = datetime.now(UTC)
    assert gone_at >= ts(done["finished_at"]) + timedelta(seconds=retention)
    for table in ("job_logs", "job_executions"):
        assert not stack.sql(f"SELECT 1 FROM {table} WHERE job_id = $1", job["id"]), table
    assert stack.job(waiting["id"])["status"] == "pending"
    stack.http.close()
