"""``python -m shared.dbtools create``: create the database from DATABASE_URL if missing."""

from __future__ import annotations

import asyncio
import sys

from shared.db import ensure_database
from shared.settings import get_settings


def main(argv: list[str]) -> int:
    if argv != ["create"]:
        print("usage: python -m shared.dbtools create", file=sys.stderr)
        return 2
    url = get_settings().database_url
    created = asyncio.run(ensure_database(url))
    print(f"database {'created' if created else 'exists'}: {url.rsplit('/', 1)[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
