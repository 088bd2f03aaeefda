"""The API app factory: ``api/main``-style, it only wires resources and mounts routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import case, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from services.api.errors import install_error_handlers
from services.api.keycache import KeyCache
from services.api.keys import hash_key
from services.api.metrics import Metrics
from services.api.middleware import BodySizeLimit
from services.api.routers import audit, health, jobs, keys, observe, schedules, stream
from services.api.stream import EventHub
from shared import demo_tasks
from shared.broker import Broker
from shared.catalog import TaskCatalog, announce_task_types
from shared.db import create_engine, create_pool, create_sessionmaker
from shared.errors import ConfigError
from shared.jobs.prepare import Limits
from shared.models import ApiKey
from shared.outbox import Outbox
from shared.settings import Settings, get_settings

log = logging.getLogger("switchyard.api")


async def bootstrap_api_keys(session: AsyncSession, keys: dict[str, str]) -> int:
    """Store the ``SWITCHYARD_API_KEYS`` keys (hashed); revoke env keys no longer listed.

    Returns the number of usable keys (env and API-created) afterwards.
    """
    hashes = {hash_key(k): role for k, role in keys.items()}
    for key_hash, role in hashes.items():
        stmt = insert(ApiKey).values(
            id=uuid7(), key_hash=key_hash, role=role, label=f"env:{role}", source="env"
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[ApiKey.key_hash],
                # A key an admin revoked stays revoked; one revoked because it had left
                # SWITCHYARD_API_KEYS comes back with it.
                set_={
                    "role": role,
                    "source": "env",
                    "revoked_at": case(
                        (ApiKey.revoked_reason == "env-removed", None), else_=ApiKey.revoked_at
                    ),
                    "revoked_reason": case(
                        (ApiKey.revoked_reason == "env-removed", None),
                        else_=ApiKey.revoked_reason,
                    ),
                },
            )
        )
    await session.execute(
        update(ApiKey)
        .where(
            ApiKey.source == "env",
            ApiKey.revoked_at.is_(None),
            ApiKey.key_hash.not_in(list(hashes) or [""]),
        )
        .values(revoked_at=func.now(), revoked_reason="env-removed")
    )
    # Roles and revocations may have changed: running replicas forget what they
    # remembered (services/api/keycache.py).
    await session.execute(text("SELECT pg_notify('switchyard_api_keys', 'env')"))
    return int(
        await session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        )
        or 0
    )


async def prepare_database(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Store the bootstrap keys and the demo task types; refuse to run with no keys."""
    async with sessionmaker() as session:
        usable = await bootstrap_api_keys(session, settings.api_keys)
        if usable == 0 and not settings.dev:
            raise ConfigError(
                "no API keys: set SWITCHYARD_API_KEYS='key:role,...' (roles: viewer, "
                "submitter, admin), or SWITCHYARD_DEV=1 for a local dev stack"
            )
        if settings.demo_tasks:
            await announce_task_types(session, demo_tasks.registry)
        await session.commit()


async def preflight(settings: Settings) -> None:
    """What ``python -m services.api`` checks before serving, to fail with one clear line."""
    engine = create_engine(settings, pool_size=1)
    try:
        await prepare_database(settings, create_sessionmaker(engine))
    finally:
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        sessionmaker = create_sessionmaker(engine)
        try:
            await prepare_database(settings, sessionmaker)
            broker = Broker(
                settings.amqp_url,
                settings.namespace,
                name="switchyard-api",
                publish_timeout=settings.publish_timeout_seconds,
            )
            await broker.connect()
        except BaseException:
            await engine.dispose()
            raise
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.broker = broker
        app.state.outbox = Outbox(broker)
        app.state.outbox.start()
        app.state.pool = await create_pool(settings)
        app.state.key_cache = KeyCache(settings.sync_database_url)
        app.state.key_cache.start()
        app.state.catalog = TaskCatalog()
        app.state.metrics = Metrics()
        app.state.hub = EventHub(broker, buffer_size=settings.ws_buffer_events)
        app.state.hub.listeners.append(app.state.metrics.observe)
        await app.state.hub.start()
        app.state.limits = Limits.from_settings(settings)
        # Dev mode without keys: requests without a key act as admin.
        app.state.open_dev_mode = settings.dev and not settings.api_keys
        if app.state.open_dev_mode:
            log.warning(
                "SWITCHYARD_DEV=1 and no SWITCHYARD_API_KEYS: requests without a key act "
                "as admin. Never expose this API."
            )
        try:
            yield
        finally:
            await app.state.key_cache.close()
            await app.state.outbox.close()
            await app.state.pool.close()
            await broker.close()
            await engine.dispose()

    app = FastAPI(
        title="Switchyard",
        version="0.1.0",
        summary="Jobs over REST, scheduled by priority, dependencies and free worker CPU/memory.",
        lifespan=lifespan,
    )
    app.state.broker = None
    app.state.outbox = None
    app.state.pool = None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(stream.router)
    app.include_router(observe.router)
    app.include_router(keys.router)
    app.include_router(audit.router)
    app.include_router(schedules.router)
    return app
