"""Database chores: create the database when missing, apply the migrations.

``python -m shared.dbtools create|upgrade`` (``switchyard db upgrade`` is the same
``upgrade``). The migrations ship inside the package, so this works from any directory
with an installed Switchyard, with no ``alembic.ini``.

Both wait for the database to answer (up to ``WAIT_SECONDS``): in a compose stack or a
Kubernetes Job the migration may start while PostgreSQL is still starting, and one
refused connection must not fail the deploy. Only an outage is waited out; a wrong
password or a missing role fails at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from shared.db import ensure_database, is_db_outage
from shared.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long create/upgrade wait for an unreachable database before giving up.
WAIT_SECONDS = 60.0
# Pause between two attempts to reach it.
RETRY_PAUSE_SECONDS = 1.0


class DatabaseNotAnswering(RuntimeError):
    """The database stayed unreachable for the whole wait."""


def create(url: str, *, wait_seconds: float = WAIT_SECONDS) -> None:
    created = asyncio.run(_ensure_database_waiting(url, wait_seconds))
    print(f"database {'created' if created else 'exists'}: {url.rsplit('/', 1)[-1]}")


async def _ensure_database_waiting(url: str, wait_seconds: float) -> bool:
    """``ensure_database``, tried again while the database is unreachable, until
    ``wait_seconds`` have passed; says once that it waits, and what it last saw."""
    parsed = make_url(url)
    where = f"{parsed.host or '127.0.0.1'}:{parsed.port or 5432}"
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        try:
            return await ensure_database(url)
        except Exception as exc:
            if not is_db_outage(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseNotAnswering(
                    f"the database at {where} did not answer within {wait_seconds:g} s "
                    f"(last error: {type(exc).__name__}: {exc})"
                ) from exc
            if not announced:
                print(
                    f"database at {where} not answering yet ({type(exc).__name__}); "
                    f"retrying for up to {wait_seconds:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            await asyncio.sleep(min(RETRY_PAUSE_SECONDS, left))


def upgrade(url: str, revision: str = "head", *, wait_seconds: float = WAIT_SECONDS) -> None:
    """Create the database if missing (waiting for it to answer), then migrate it to
    ``revision``."""
    create(url, wait_seconds=wait_seconds)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)
    print(f"database migrated to {revision}")


def main(argv: list[str]) -> int:
    if argv not in (["create"], ["upgrade"]):
        print("usage: python -m shared.dbtools create|upgrade", file=sys.stderr)
        return 2
    url = get_settings().database_url
    try:
        (create if argv == ["create"] else upgrade)(url)
    except DatabaseNotAnswering as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
