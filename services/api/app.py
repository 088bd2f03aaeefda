"""The API app factory: ``api/main``-style, it only wires resources and mounts routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.apidocs import install_api_docs
from services.api.dashboard import install_dashboard
from services.api.deps import reject_unknown_query_params
from services.api.errors import CatchUnexpected, install_error_handlers
from services.api.fast_submit import FastSubmit
from services.api.keycache import KeyCache
from services.api.keys import bootstrap_api_keys, count_usable_keys
from services.api.metrics import Metrics
from services.api.middleware import BodySizeLimit, RateLimit
from services.api.routers import audit, health, jobs, keys, observe, schedules, stream
from services.api.stream import EventHub
from shared import demo_tasks
from shared.bodies import one_hint
from shared.broker import Broker
from shared.catalog import TaskCatalog, announce_task_types
from shared.db import create_engine, create_pool, create_sessionmaker
from shared.errors import ConfigError
from shared.jobs.grouped import GroupedInserts
from shared.jobs.prepare import Limits
from shared.outbox import Outbox
from shared.settings import Settings, get_settings
from shared.stats import HistoryReads

log = logging.getLogger("switchyard.api")


async def prepare_database(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Store the bootstrap keys and the demo task types; refuse to run with no keys.
    Dev mode revokes no key: a laptop's API must not lock out the replicas serving
    the same database."""
    async with sessionmaker() as session:
        await bootstrap_api_keys(
            session, settings.api_keys, key_set=settings.api_keys_set,
            revoke_unlisted=not settings.dev,
        )  # fmt: skip
        if not settings.dev and await count_usable_keys(session) == 0:
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
        app.state.outbox = Outbox(broker, compact=one_hint)
        app.state.outbox.start()
        app.state.pool = await create_pool(settings)
        app.state.inserts = GroupedInserts(app.state.pool)
        # Plain batches hold a pooled connection each while their parts are checked
        # and stored: at most half the pool, so single submits always find one (the
        # rest go through a session, as batches with parents do).
        app.state.batch_connections = asyncio.Semaphore(app.state.pool.get_max_size() // 2)
        app.state.key_cache = KeyCache(
            settings.sync_database_url,
            refused_ttl=settings.key_refused_cache_seconds,
            recheck_seconds=settings.ws_key_recheck_seconds,
        )
        app.state.key_cache.start()
        app.state.catalog = TaskCatalog()
        app.state.metrics = Metrics()
        app.state.history = HistoryReads()
        app.state.hub = EventHub(broker, buffer_size=settings.ws_buffer_events)
        app.state.hub.listeners.append(app.state.metrics.observe)
        await app.state.hub.start()
        app.state.limits = Limits.from_settings(settings)
        app.state.replay_reads = asyncio.Semaphore(stream.REPLAY_READS)
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
            await app.state.history.close()
            await app.state.inserts.close()  # before the outbox: its last events go there
            await app.state.outbox.close()
            await app.state.pool.close()
            await broker.close()
            await engine.dispose()

    app = FastAPI(
        title="Switchyard",
        version="0.1.0",
        summary="Jobs over REST, scheduled by priority, dependencies and free worker CPU/memory.",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query_params)],
        docs_url=None,  # served offline by install_api_docs, below
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look for a configured provider on every request
        # (environment reads included); the yard exports Prometheus metrics instead
        # (/metrics), and configures no OpenTelemetry (docs/performance-history.md).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.broker = None
    app.state.outbox = None
    app.state.pool = None
    app.state.inserts = None
    app.state.batch_connections = None
    install_error_handlers(app)
    app.add_middleware(FastSubmit)  # inside the limits: they see every request
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimit, settings=settings)  # outermost: before any work
    # Around everything, the rate limit too: whatever escapes still gets a JSON 500.
    app.add_middleware(CatchUnexpected)
    app.include_router(health.router)
    app.include_router(stream.router)  # first: its GET /jobs/stream before /jobs/{job_id}
    app.include_router(jobs.router)
    app.include_router(observe.router)
    app.include_router(keys.router)
    app.include_router(audit.router)
    app.include_router(schedules.router)
    install_api_docs(app)
    install_dashboard(app)
    return app
