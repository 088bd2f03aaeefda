"""Remembered API keys: a revoke on one API replica is refused on every other at once."""

from __future__ import annotations

import httpx
import pytest

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import auth, listening_key_cache, statements_on, wait_for

# A revocation reaches the other replica within 2 s (its notification, not a cache's
# expiry): alone, not beside another test's services.
pytestmark = pytest.mark.serial


async def test_revoke_on_one_replica_is_refused_by_another(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    other_app = create_app(settings)
    async with other_app.router.lifespan_context(other_app):
        cache = await listening_key_cache(other_app)
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

    cache = await listening_key_cache(app)
    before = cache.generation  # a request reads the generation, then the key row...
    cache.clear()  # ...a revocation's NOTIFY arrives meanwhile...
    cache.put("digest", Actor(key_id="k", role="viewer"), before)  # ...then it answers
    assert cache.get("digest") is None
    cache.put("digest", Actor(key_id="k", role="viewer"), cache.generation)
    assert cache.get("digest") is not None


async def test_an_invalid_key_is_looked_up_once_then_refused_from_memory(
    app: object, client: httpx.AsyncClient, db: object
) -> None:
    await listening_key_cache(app)
    lookups = statements_on(app, "api_keys")
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/stats")):
        r = await client.request(method, path, json={}, headers=auth("sy_not-a-key"))
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert len(lookups) == 1, lookups
    # The refusal still leaves its audit row (the POST).
    rows = await db.fetch("SELECT outcome, status_code FROM audit_log")  # type: ignore[attr-defined]
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("unauthenticated", 401)]


async def test_a_refused_key_that_becomes_valid_is_accepted_once_keys_change(
    app: object, client: httpx.AsyncClient, db: object
) -> None:
    from services.api.keys import hash_key

    await listening_key_cache(app)
    secret = "sy_restored-later"
    assert (await client.get("/jobs", headers=auth(secret))).status_code == 401
    await db.execute(  # type: ignore[attr-defined]
        "INSERT INTO api_keys (id, key_hash, role, label, source) "
        "VALUES (gen_random_uuid(), $1, 'viewer', 'late', 'api')",
        hash_key(secret),
    )
    await db.execute("SELECT pg_notify('switchyard_api_keys', 'test')")  # type: ignore[attr-defined]

    async def accepted() -> bool:
        return (await client.get("/jobs", headers=auth(secret))).status_code == 200

    await wait_for(accepted, timeout=2, what="the key accepted after the notification")


async def test_refused_keys_are_remembered_in_bounded_memory() -> None:
    from services.api.keycache import KeyCache

    cache = KeyCache(None, max_entries=100, refused_ttl=60)
    for i in range(10_000):
        cache.remember_refused(f"digest-{i}", cache.generation)
    assert len(cache._refused) == 100
    assert cache.is_refused("digest-9999") and not cache.is_refused("digest-0")


async def test_a_watched_key_revoked_without_a_notification_is_caught_by_the_recheck(
    app: object, db: object
) -> None:
    from services.api.keys import hash_key
    from tests.conftest import VIEWER_KEY

    cache = app.state.key_cache  # type: ignore[attr-defined]
    watch = cache.watch(hash_key(VIEWER_KEY))
    # Revoked behind the API's back: no NOTIFY; the periodic check (2 s) must see it.
    await db.execute(  # type: ignore[attr-defined]
        "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(VIEWER_KEY)
    )

    async def revoked() -> bool:
        return bool(watch.revoked.is_set())

    await wait_for(revoked, timeout=5, what="the watch told of the revocation")
    cache.unwatch(watch)
