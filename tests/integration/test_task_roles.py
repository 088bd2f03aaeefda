"""A task type's ``roles`` only ever tighten through announcements: a worker announcing
weaker roles than the catalog holds does not weaken them; the catalog keeps the
stricter ones, and the announcer's log and the audit log say so."""

from __future__ import annotations

import logging

import asyncpg
import httpx
import pytest

from shared.catalog import announce_task_types
from shared.tasks import TaskContext, TaskRegistry
from tests.conftest import ADMIN_KEY, SUBMITTER_KEY, auth


def registry(roles: set[str] | None) -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task("ops.purge", roles=roles)
    def purge(ctx: TaskContext, payload: dict) -> None: ...

    return reg


async def announce(app: object, roles: set[str] | None) -> None:
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await announce_task_types(session, registry(roles), announcer="worker w-old")
        await session.commit()


async def stored_roles(db: asyncpg.Connection) -> list[str]:
    return list(await db.fetchval("SELECT roles FROM task_types WHERE name = 'ops.purge'"))


@pytest.mark.parametrize("weaker", [None, {"submitter"}, {"submitter", "admin"}])
async def test_weaker_roles_do_not_weaken_the_catalog(
    app: object,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    weaker: set[str] | None,
) -> None:
    await announce(app, {"admin"})
    with caplog.at_level(logging.WARNING, logger="switchyard.catalog"):
        await announce(app, weaker)
    assert await stored_roles(db) == ["admin"]
    refused = await client.post("/jobs", json={"type": "ops.purge"}, headers=auth(SUBMITTER_KEY))
    assert refused.status_code == 403, refused.text
    assert (
        await client.post("/jobs", json={"type": "ops.purge"}, headers=auth(ADMIN_KEY))
    ).status_code == 201
    warning = next(r for r in caplog.records if "ops.purge" in r.getMessage())
    assert "weaker" in warning.getMessage() and "admin" in warning.getMessage()
    audit = await db.fetchrow(
        "SELECT actor, outcome, detail FROM audit_log WHERE action = 'task_type.roles_kept'"
    )
    assert audit is not None and audit["actor"] == "worker w-old"
    assert '"kept": ["admin"]' in audit["detail"]


async def test_stricter_roles_tighten_the_catalog(app: object, db: asyncpg.Connection) -> None:
    await announce(app, None)
    assert await stored_roles(db) == []
    await announce(app, {"submitter"})
    assert await stored_roles(db) == ["submitter"]
    await announce(app, {"admin"})
    assert await stored_roles(db) == ["admin"]
    # The same roles again, or an equal spelling of them, change nothing and warn nobody.
    await announce(app, {"admin"})
    assert await stored_roles(db) == ["admin"]
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'task_type.%'") == 0
