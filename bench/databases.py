"""The bench's own databases: each measure makes a fresh one, migrated as
``make migrate`` does, and drops it when done."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


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
