"""GET /jobs/{id}/logs a page at a time: every line exactly once, in order."""

from __future__ import annotations

import base64
import uuid

import asyncpg
import httpx
import pytest

from shared.client import AsyncClient
from shared.jobs import logs


async def _job_with_lines(client: httpx.AsyncClient, db: asyncpg.Connection) -> str:
    job = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    rows = [(uuid.UUID(job["id"]), attempt, seq, f"a{attempt} line {seq}")
            for attempt in (1, 2, 3) for seq in range(1, 18)]  # fmt: skip
    await db.executemany(
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "VALUES ($1, $2, $3, now(), 'info', $4)",
        rows,
    )
    return str(job["id"])


async def test_paging_walks_every_line_exactly_once_in_order(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await _job_with_lines(client, db)
    expected = [f"a{a} line {s}" for a in (1, 2, 3) for s in range(1, 18)]
    seen: list[str] = []
    pages = 0
    params: dict[str, object] = {"limit": 7}
    while True:
        r = await client.get(f"/jobs/{job_id}/logs", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["lines"]) <= 7
        seen += [ln["message"] for ln in page["lines"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected
    assert pages == 8  # 51 lines, 7 a page
    # Without a limit, the default page (1,000) holds them all.
    whole = (await client.get(f"/jobs/{job_id}/logs")).json()
    assert [ln["message"] for ln in whole["lines"]] == expected and whole["next_cursor"] is None


async def test_a_garbage_cursor_or_limit_is_refused_with_a_message(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await _job_with_lines(client, db)
    for garbage in ("nope", "L1.2", "!!!!", "TC0xLjI", "TDk5OTk5OTk5OTk5OS4x"):
        r = await client.get(f"/jobs/{job_id}/logs", params={"cursor": garbage})
        assert r.status_code == 422, (garbage, r.text)
        assert "next_cursor" in r.json()["detail"]
    for limit in (0, 10_001, -1):
        r = await client.get(f"/jobs/{job_id}/logs", params={"limit": limit})
        assert r.status_code == 422 and "limit" in r.json()["detail"]


async def test_the_sdk_follows_next_cursor(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await _job_with_lines(client, db)
    sdk = AsyncClient("http://sy.test", api_key=client.headers["authorization"].split()[1])
    sdk._http = httpx.AsyncClient(  # the SDK's own calls, over the in-process app
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://sy.test",
        headers=dict(client.headers),
    )
    async with sdk:
        logs = await sdk.logs(job_id, page_size=10)
    assert len(logs.lines) == 51 and logs.next_cursor is None
    assert logs.lines[-1].message == "a3 line 17"


async def test_a_page_of_long_lines_is_bounded_in_bytes_and_the_rest_follows(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing with the line count alone bounding a page: 300 lines of 64 Ki
    characters came in one answer of ~19 MiB (10,000 such lines: 655 MiB)."""
    job = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    long = [f"{seq:05d}" + "x" * 65_531 for seq in range(300)]
    await db.executemany(
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "VALUES ($1, 1, $2, now(), 'info', $3)",
        [(uuid.UUID(job["id"]), seq, text) for seq, text in enumerate(long)],
    )
    seen: list[str] = []
    params: dict[str, object] = {"limit": 10_000}
    while True:
        r = await client.get(f"/jobs/{job['id']}/logs", params=params)
        assert r.status_code == 200, r.text
        assert len(r.content) < 9 * 1024 * 1024
        page = r.json()
        assert page["lines"], "a page without a line would never end"
        seen += [ln["message"] for ln in page["lines"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == long  # every line once, in order, over three pages


async def test_a_line_heavier_than_a_page_comes_alone_and_paging_goes_on(
    client: httpx.AsyncClient, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen failing with only the lines that start within the budget read: a first line
    past it came alone with no next_cursor, and the rest of the job was unreachable."""
    monkeypatch.setattr(logs, "LOG_PAGE_BYTES", 100)
    job_id = await _job_with_lines(client, db)
    await db.execute("UPDATE job_logs SET message = message || repeat('x', 150) WHERE seq % 2 = 1")
    expected = [r["message"] for r in await db.fetch(
        "SELECT message FROM job_logs WHERE job_id = $1 ORDER BY attempt, seq", uuid.UUID(job_id)
    )]  # fmt: skip
    seen: list[str] = []
    params: dict[str, object] = {}
    while True:
        page = (await client.get(f"/jobs/{job_id}/logs", params=params)).json()
        assert page["lines"]
        assert len(page["lines"]) == 1 or sum(len(ln["message"]) for ln in page["lines"]) <= 100
        seen += [ln["message"] for ln in page["lines"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected


async def test_a_cursor_of_another_jobs_logs_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing when a cursor held (attempt, seq) alone: another job's cursor was
    taken, and the lines before its position were skipped unseen."""
    first, second = await _job_with_lines(client, db), await _job_with_lines(client, db)
    page = (await client.get(f"/jobs/{first}/logs", params={"limit": 20})).json()
    assert page["next_cursor"]
    r = await client.get(f"/jobs/{second}/logs", params={"cursor": page["next_cursor"]})
    assert r.status_code == 422 and "not a cursor of this job's logs" in r.json()["detail"]
    ok = await client.get(f"/jobs/{first}/logs", params={"cursor": page["next_cursor"]})
    assert ok.status_code == 200 and ok.json()["lines"][0]["message"] == "a2 line 4"
    # An older API's cursor names no job: taken as it was (a rolling upgrade).
    older = base64.urlsafe_b64encode(b"L1.17").decode().rstrip("=")
    ok = await client.get(f"/jobs/{second}/logs", params={"cursor": older})
    assert ok.status_code == 200 and ok.json()["lines"][0]["message"] == "a2 line 1"
