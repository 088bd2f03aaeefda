"""Scenario 10, the soak: 50,000 mixed jobs (successes, failures, retries, cancels,
log lines) through 2 workers. Every job ends terminal as its kind says it must, the
database counts match what was submitted, and no service's memory keeps growing after
warm-up. The figures are printed (and quoted in docs/reliability.md).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import Stack, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.slow_fault, pytest.mark.timeout(1500)]

TOTAL = int(os.environ.get("SOAK_JOBS", "50000"))
BATCH = 500
# Per 20 jobs: 13 succeed, 2 fail once then succeed, 1 fails for good, 2 log two
# lines, 2 are cancelled (long sleeps, cancelled right after submission).
PATTERN = ["echo"] * 13 + ["retry"] * 2 + ["fail"] + ["log"] * 2 + ["cancel"] * 2
RETRY = {"max_attempts": 2, "initial_delay_seconds": 0.05, "backoff_multiplier": 1}


def body(kind: str, i: int) -> dict:
    match kind:
        case "echo":
            return {"type": "demo.echo", "payload": {"i": i}}
        case "retry":
            return {"type": "demo.fail", "payload": {"fail_times": 1}, "retry": RETRY}
        case "fail":
            return {"type": "demo.fail", "payload": {"fail_times": 5}, "retry": RETRY}
        case "log":
            return {"type": "demo.log", "payload": {"lines": 2}}
        case "cancel":
            return {"type": "demo.sleep", "payload": {"seconds": 60}}
    raise AssertionError(kind)


def rss_mb(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: round(p.memory_info().rss / 2**20, 1) for name, p in procs.items()}


def test_soak_50000_mixed_jobs(start_service, settings, request) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    api = start_service("api", env={"SWITCHYARD_API_PORT": str(port)})
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", api)
    stack = Stack(start_service, f"http://127.0.0.1:{port}", settings.database_url)
    request.addfinalizer(stack.http.close)
    started = {
        "api": api,
        "scheduler": stack.start("scheduler"),
        "logger": stack.start("logger"),
        **{w: stack.worker(w, "--threads", "16") for w in ("soak-a", "soak-b")},
    }
    procs = {name: psutil.Process(p.proc.pid) for name, p in started.items()}

    kinds = [PATTERN[i % len(PATTERN)] for i in range(TOTAL)]
    expected = {k: kinds.count(k) for k in set(kinds)}
    ids: dict[str, list[str]] = {k: [] for k in expected}
    samples: list[tuple[float, int, dict[str, float]]] = []
    start = time.monotonic()
    client = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
    )
    request.addfinalizer(client.close)

    def cancel(job_id: str) -> int:
        return client.patch(f"/jobs/{job_id}/cancel").status_code

    with ThreadPoolExecutor(8) as pool:
        for first in range(0, TOTAL, BATCH):
            chunk = kinds[first : first + BATCH]
            r = client.post(
                "/jobs/batch", json={"jobs": [body(k, first + n) for n, k in enumerate(chunk)]}
            )
            assert r.status_code == 201, r.text[:300]
            for kind, job in zip(chunk, r.json()["jobs"], strict=True):
                ids[kind].append(job["id"])
            to_cancel = [
                j["id"] for k, j in zip(chunk, r.json()["jobs"], strict=True) if k == "cancel"
            ]
            assert set(pool.map(cancel, to_cancel)) <= {200}
            if first // BATCH % 10 == 0:
                samples.append((time.monotonic() - start, first, rss_mb(procs)))
        submitted = time.monotonic() - start

    def terminal() -> int:
        return int(
            stack.sql(
                "SELECT count(*) AS n FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')"
            )[0]["n"]
        )

    deadline = time.monotonic() + 900
    done = terminal()
    while done < TOTAL and time.monotonic() < deadline:
        time.sleep(2)
        done = terminal()
        samples.append((time.monotonic() - start, done, rss_mb(procs)))
    elapsed = time.monotonic() - start
    assert done == TOTAL, f"{TOTAL - done} jobs not terminal after {elapsed:.0f} s"

    # The database matches what was submitted, kind by kind.
    rows = stack.sql("SELECT id::text, status, attempts FROM jobs")
    assert len(rows) == TOTAL
    by_id = {r["id"]: (r["status"], r["attempts"]) for r in rows}
    want = {
        "echo": ("completed", 1),
        "retry": ("completed", 2),
        "fail": ("failed", 2),
        "log": ("completed", 1),
    }
    for kind, (status, attempts) in want.items():
        got = {by_id[i] for i in ids[kind]}
        assert got == {(status, attempts)}, (kind, got)
    assert {by_id[i][0] for i in ids["cancel"]} == {"cancelled"}
    # One execution row per attempt made (none twice: (job, attempt) is unique), the
    # right number of log lines, and no job left without its history.
    attempts_made = sum(a for _, a in by_id.values())

    def history_written() -> bool:
        n = stack.sql("SELECT count(*) AS n FROM job_executions")[0]["n"]
        return n == attempts_made

    stack.wait_for(history_written, timeout=60, what="one execution row per attempt")
    by_type = {
        r["type"]: r["n"]
        for r in stack.sql(
            "SELECT j.type, count(*) AS n FROM job_logs l JOIN jobs j ON j.id = l.job_id"
            " GROUP BY j.type"
        )
    }
    lines = sum(by_type.values())
    # demo.log: its 2 lines each; a demo.sleep cancelled while running logs that it
    # stopped (one line per attempt that ran); nothing else logs.
    ran_then_cancelled = stack.sql(
        "SELECT count(*) AS n FROM job_executions e JOIN jobs j ON j.id = e.job_id"
        " WHERE j.type = 'demo.sleep' AND e.started_at IS NOT NULL"
    )[0]["n"]
    assert by_type.get("demo.log", 0) == 2 * expected["log"]
    assert by_type.get("demo.sleep", 0) == ran_then_cancelled
    assert set(by_type) <= {"demo.log", "demo.sleep"}

    # Memory: after warm-up (the first fifth of the run), flat.
    warm = next(s for s in samples if s[1] >= TOTAL // 5)
    last = samples[-1]
    growth = {name: round(last[2][name] - warm[2][name], 1) for name in procs}
    print(
        f"\nsoak: {TOTAL} jobs ({expected}); submitted in {submitted:.0f} s, all terminal "
        f"after {elapsed:.0f} s ({TOTAL / elapsed:.0f} jobs/s); {attempts_made} attempts, "
        f"{lines} log lines"
    )
    print(f"soak: RSS MB after warm-up {warm[2]}")
    print(f"soak: RSS MB at the end    {last[2]}")
    print(f"soak: growth MB            {growth}")
    for name, mb in growth.items():
        assert mb < max(25.0, 0.25 * warm[2][name]), (name, warm[2][name], last[2][name])
