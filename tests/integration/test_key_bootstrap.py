"""Bootstrapping ``SWITCHYARD_API_KEYS`` at API start: a configuration revokes only the
env keys it created itself (marked by the label ``env:<role>`` for the default key set,
``env:<set>:<role>`` for ``SWITCHYARD_API_KEYS_SET=<set>``) and no longer lists; dev
mode and an empty list revoke nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.app import prepare_database
from services.api.keys import create_api_key
from shared.auth import Actor
from shared.db import create_engine, create_sessionmaker
from shared.settings import Settings


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings, pool_size=1)
    yield create_sessionmaker(engine)
    await engine.dispose()


def _config(settings: Settings, keys: dict[str, str], **more: object) -> Settings:
    return settings.model_copy(update={"api_keys": keys, **more})


async def _valid(db: asyncpg.Connection) -> dict[str, str]:
    """label -> role of the keys that still work."""
    rows = await db.fetch("SELECT label, role FROM api_keys WHERE revoked_at IS NULL")
    return {r["label"]: r["role"] for r in rows}


async def test_a_configuration_revokes_only_the_keys_it_created(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], db: asyncpg.Connection
) -> None:
    await db.execute("DELETE FROM api_keys")
    web = _config(settings, {"web-admin": "admin", "web-viewer": "viewer"})
    batch = _config(settings, {"batch-submitter": "submitter"}, api_keys_set="batch")
    await prepare_database(web, sessionmaker)
    await prepare_database(batch, sessionmaker)
    async with sessionmaker() as session:
        await create_api_key(session, role="submitter", label="ci", actor=Actor("t", "admin"))
        await session.commit()
    assert await _valid(db) == {
        "env:admin": "admin", "env:viewer": "viewer", "env:batch:submitter": "submitter",
        "ci": "submitter",
    }  # fmt: skip

    # The default set drops its viewer: only that key goes; the batch set's key and the
    # API-created key were not created by this configuration and stay.
    await prepare_database(_config(settings, {"web-admin": "admin"}), sessionmaker)
    assert await _valid(db) == {
        "env:admin": "admin", "env:batch:submitter": "submitter", "ci": "submitter",
    }  # fmt: skip
    reasons = await db.fetch(
        "SELECT label, revoked_reason FROM api_keys WHERE revoked_at IS NOT NULL"
    )
    assert [(r["label"], r["revoked_reason"]) for r in reasons] == [("env:viewer", "env-removed")]

    # The batch set rotates its key: its old one goes, nobody else's.
    rotated = _config(settings, {"batch-submitter-2": "submitter"}, api_keys_set="batch")
    await prepare_database(rotated, sessionmaker)
    valid = await db.fetch(
        "SELECT label FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
    )
    assert [r["label"] for r in valid] == ["env:admin", "ci", "env:batch:submitter"]
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 3

    # A key listed again comes back.
    await prepare_database(web, sessionmaker)
    assert "env:viewer" in await _valid(db)


async def test_dev_mode_and_an_empty_list_revoke_nothing(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], db: asyncpg.Connection
) -> None:
    await prepare_database(settings, sessionmaker)
    before = await db.fetch("SELECT * FROM api_keys ORDER BY id")
    assert len(before) == 4 and all(r["revoked_at"] is None for r in before)

    # Dev mode without keys: not one row written (nor a notification sent).
    await prepare_database(_config(settings, {}, dev=True), sessionmaker)
    assert await db.fetch("SELECT * FROM api_keys ORDER BY id") == before
    # Dev mode with keys: they are stored, the others are left alone.
    await prepare_database(_config(settings, {"dev-only": "admin"}, dev=True), sessionmaker)
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 5
    # Outside dev mode, an empty list is no configuration: it revokes nothing (the API
    # starts because a usable key exists).
    await prepare_database(_config(settings, {}), sessionmaker)
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL") == 0
