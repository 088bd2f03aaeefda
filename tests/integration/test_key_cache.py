"""Remembered API keys: a revoke on one API replica is refused on every other at once."""

from __future__ import annotations

import httpx

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import auth, wait_for


async def test_revoke_on_one_replica_is_refused_by_another(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    other_app = create_app(settings)
    async with other_app.router.lifespan_context(other_app):
        cache = other_app.state.key_cache

        async def listening() -> bool:
            return cache.active

        await wait_for(listening, timeout=10, what="the other replica listens for revocations")
        made = (await client.post("/api-keys", json={"role": "viewer", "label": "two"})).json()
        transport = httpx.ASGITransport(app=other_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://other") as other:
            assert (await other.get("/jobs", headers=auth(made["key"]))).status_code == 200
            assert cache.get(next(iter(cache._entries))) is not None  # remembered there
            assert (await client.delete(f"/api-keys/{made['id']}")).status_code == 204

            async def refused() -> bool:
                r = await other.get("/jobs", headers=auth(made["key"]))
                return r.status_code == 401

            # The NOTIFY arrives within milliseconds; the cache's own expiry is 10 s.
            await wait_for(refused, timeout=2, what="the other replica refuses the key")


async def test_a_lookup_that_raced_a_revocation_is_not_remembered(
    app: object, settings: Settings
) -> None:
    from shared.auth import Actor

    cache = app.state.key_cache  # type: ignore[attr-defined]

    async def listening() -> bool:
        return bool(cache.active)

    await wait_for(listening, timeout=10, what="the replica listens for revocations")
    before = cache.generation  # a request reads the generation, then the key row...
    cache.clear()  # ...a revocation's NOTIFY arrives meanwhile...
    cache.put("digest", Actor(key_id="k", role="viewer"), before)  # ...then it answers
    assert cache.get("digest") is None
    cache.put("digest", Actor(key_id="k", role="viewer"), cache.generation)
    assert cache.get("digest") is not None
