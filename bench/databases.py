"""The bench's own databases and broker namespaces: each measure makes a fresh
database, migrated as ``make migrate`` does, and a namespace of its own, and removes
both when done."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def dsn_of(db: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + f"/{db}"


def sqlalchemy_url(dsn: str) -> str:
    """``DATABASE_URL`` for the services (SQLAlchemy's asyncpg dialect)."""
    return dsn.replace("postgresql://", "postgresql+asyncpg://")


async def create_migrated(db: str) -> str:
    """A fresh database ``db`` (a leftover of that name is dropped) at the migrations'
    head; its DSN."""
    await drop(db)
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    dsn = dsn_of(db)
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": sqlalchemy_url(dsn)},
        check=True,
        capture_output=True,
    )
    return dsn


async def drop(*dbs: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        for db in dbs:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_namespace(namespace: str, extra_queues: Sequence[str] = ()) -> None:
    """Remove ``namespace``'s exchanges and queues (its scheduler's, logger's and dead
    letters', which never expire, and ``extra_queues``) from RabbitMQ once its services
    have stopped. A broker that refuses is reported, not raised: the run's figures are
    taken by then."""
    from shared.broker import Broker

    try:
        async with Broker(AMQP, namespace, name="bench-cleanup") as broker:
            await broker.delete_namespace(extra_queues)
    except Exception as exc:
        print(f"  could not remove RabbitMQ namespace {namespace}: {exc!r}", flush=True)
