"""Database chores: create the database when missing, apply the migrations.

``python -m shared.dbtools create|upgrade`` (``switchyard db upgrade`` is the same
``upgrade``). The migrations ship inside the package, so this works from any directory
with an installed Switchyard, with no ``alembic.ini``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db import ensure_database
from shared.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create(url: str) -> None:
    created = asyncio.run(ensure_database(url))
    print(f"database {'created' if created else 'exists'}: {url.rsplit('/', 1)[-1]}")


def upgrade(url: str, revision: str = "head") -> None:
    """Create the database if missing, then migrate it to ``revision``."""
    create(url)
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
    (create if argv == ["create"] else upgrade)(url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
