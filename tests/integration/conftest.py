from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, auth


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (admin key by default; pass headers to act as others)."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://switchyard.test", headers=auth(ADMIN_KEY)
    ) as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database, for assertions on rows."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    yield conn
    await conn.close()
