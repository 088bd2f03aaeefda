"""alembic upgrade head -> downgrade base -> upgrade head, and the audit log guard."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from tests.conftest import ROOT


def alembic(database_url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


EXPECTED = {
    "alembic_version", "jobs", "job_dependencies", "job_executions", "job_logs",
    "workers", "task_types", "api_keys", "audit_log", "schedules", "dependents_to_fail",
    "ready_jobs",
}  # fmt: skip


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    assert await tables(database_url) == EXPECTED  # the per-test copy is migrated
    alembic(database_url, "downgrade", "base")
    assert await tables(database_url) == {"alembic_version"}
    alembic(database_url, "upgrade", "head")
    assert await tables(database_url) == EXPECTED


async def test_audit_log_is_append_only(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO audit_log (action, outcome) VALUES ('x', 'ok')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE audit_log SET outcome = 'changed'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("TRUNCATE audit_log")
    assert await db.fetchval("SELECT outcome FROM audit_log") == "ok"


def test_models_and_migrations_agree(database_url: str) -> None:
    """``alembic check``: the migrations build exactly what shared/models.py declares."""
    alembic(database_url, "check")
