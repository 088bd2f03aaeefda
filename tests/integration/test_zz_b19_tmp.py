import time
import httpx

async def test_timing(client: httpx.AsyncClient) -> None:
    body = {"jobs": [{"type": "demo.echo", "run_at": "2999-01-01T00:00:00Z"}] * 10000}
    r = await client.post("/jobs/batch", json=body)
    assert r.status_code == 201
    for dry in (True, False):
        t = time.perf_counter()
        r = await client.post("/jobs/bulk", json={"action": "cancel", "filter": {"type": "demo.echo"}, "dry_run": dry})
        print("dry" if dry else "real", r.json()["changed"], round(time.perf_counter() - t, 2), "s")
