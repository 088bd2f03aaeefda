"""GET /jobs: the name prefix search, and times that must be RFC 3339 wherever a client
sends one (a number is not read as a Unix timestamp)."""

from __future__ import annotations

import httpx
import pytest


async def submit(client: httpx.AsyncClient, **body: object) -> dict:
    r = await client.post("/jobs", json={"type": "demo.echo", **body})
    assert r.status_code == 201, r.text
    return r.json()


async def names(client: httpx.AsyncClient, **params: str | int) -> list[str | None]:
    r = await client.get("/jobs", params=params)
    assert r.status_code == 200, r.text
    return [j["name"] for j in r.json()["items"]]


async def test_name_is_a_case_sensitive_prefix(client: httpx.AsyncClient) -> None:
    for name in ("etl-load", "etl-extract", "ETL-upper", "nightly-etl", "etl%_\\odd", "étl-ü"):
        await submit(client, name=name)
    await submit(client)  # no name
    assert await names(client, name="etl-") == ["etl-extract", "etl-load"]
    assert await names(client, name="etl") == ["etl%_\\odd", "etl-extract", "etl-load"]
    # LIKE's wildcards are plain characters here.
    assert await names(client, name="etl%") == ["etl%_\\odd"]
    assert await names(client, name="étl") == ["étl-ü"]
    assert await names(client, name="nightly-etl") == ["nightly-etl"]
    assert await names(client, name="zzz") == []
    # With the other filters and the keyset pages.
    assert await names(client, name="etl", priority="high") == []
    page = (await client.get("/jobs", params={"name": "etl", "limit": 2})).json()
    rest = await names(client, name="etl", cursor=page["next_cursor"])
    assert [j["name"] for j in page["items"]] + rest == ["etl%_\\odd", "etl-extract", "etl-load"]


@pytest.mark.parametrize("value", ["", "a\x00b", "x" * 201])
async def test_bad_name_422(client: httpx.AsyncClient, value: str) -> None:
    assert (await client.get("/jobs", params={"name": value})).status_code == 422


@pytest.mark.parametrize("value", ["10.0", "10", "1700000000", "2026-01-01", "2026-01-01T00:00:00"])
@pytest.mark.parametrize("param", ["created_after", "created_before"])
async def test_a_query_time_must_be_rfc3339(
    client: httpx.AsyncClient, param: str, value: str
) -> None:
    r = await client.get("/jobs", params={param: value})
    assert r.status_code == 422, r.text
    assert "RFC 3339" in r.json()["detail"]


@pytest.mark.parametrize("value", [10, 10.0, "1700000000", "2999-01-01"])
async def test_a_body_time_must_be_rfc3339(client: httpx.AsyncClient, value: object) -> None:
    r = await client.post("/jobs", json={"type": "demo.echo", "run_at": value})
    assert r.status_code == 422, r.text
    assert "RFC 3339" in str(r.json()["detail"])
    listed = (await client.get("/jobs")).json()["items"]
    assert listed == []


async def test_rfc3339_times_still_work(client: httpx.AsyncClient) -> None:
    job = await submit(client, run_at="2999-01-01T00:00:00.5+02:00")
    assert job["status"] == "pending"
    r = await client.get("/jobs", params={"created_before": "2999-01-01T00:00:00Z"})
    assert [j["id"] for j in r.json()["items"]] == [job["id"]]
