"""Shared fixtures: a migrated template database cloned per test, a namespace per test.

Tests run against the real local PostgreSQL and RabbitMQ (or the ones named by
``TEST_DATABASE_ADMIN_URL`` / ``AMQP_URL``). Each test gets its own database (a copy of a
template migrated once per session: fast) and its own ``SWITCHYARD_NAMESPACE``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from shared.broker import Broker
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]

ADMIN_KEY = "test-admin-key"
SUBMITTER_KEY = "test-submitter-key"
OTHER_SUBMITTER_KEY = "test-submitter-2-key"
VIEWER_KEY = "test-viewer-key"
TEST_KEYS = {
    ADMIN_KEY: "admin",
    SUBMITTER_KEY: "submitter",
    OTHER_SUBMITTER_KEY: "submitter",
    VIEWER_KEY: "viewer",
}

T = TypeVar("T")


def async_url(db: str) -> str:
    return f"{PG_BASE.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{db}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """Create and migrate the template database once per test session."""
    name = f"swy_tmpl_{os.getpid()}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    env = {**os.environ, "DATABASE_URL": async_url(name)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    """A fresh database for this test, cloned from the migrated template."""
    name = f"swy_test_{uuid.uuid4().hex[:16]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield async_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A broker namespace of this test's own; its exchanges and queues are removed after."""
    ns = f"test-{uuid.uuid4().hex[:12]}"
    yield ns
    broker = Broker(AMQP_URL, ns, name="test-cleanup")
    await broker.connect(timeout=10)
    try:
        await broker.delete_namespace()
    finally:
        await broker.close()


@pytest.fixture
def settings(database_url: str, namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        namespace=namespace,
        api_keys=dict(TEST_KEYS),
        dev=False,
    )


async def wait_for(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}: {last!r}"
            )
        await asyncio.sleep(interval)


async def listening_key_cache(app: Any) -> Any:
    """The app's key cache, once it listens for key changes (it remembers keys only
    while it does)."""
    cache = app.state.key_cache

    async def listening() -> bool:
        return bool(cache.active)

    await wait_for(listening, timeout=10, what="the API replica listens for key changes")
    return cache


def statements_on(app: Any, table: str) -> list[str]:
    """Every statement the app's engine runs from now on that reads or writes ``table``
    (a real query counter: SQLAlchemy's own event)."""
    import re

    from sqlalchemy import event

    names = re.compile(rf"\b(FROM|JOIN|INTO|UPDATE)\s+{re.escape(table)}\b", re.IGNORECASE)
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if names.search(statement):
            seen.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", before)
    return seen


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def asgi_body(receive: Any) -> bytes:
    """The whole body of a request, read by an ASGI app a test stands in for a server."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
