"""Every connection of our pools bounds its statements on the server too: a statement
its client gave up on does not run on (and pile up with its retries) for ever."""

from __future__ import annotations

from sqlalchemy import text

from shared.db import create_engine, create_pool
from shared.settings import Settings


async def test_pools_and_engines_bound_statements_on_the_server(settings: Settings) -> None:
    for generic_plans in (False, True):
        pool = await create_pool(settings, min_size=0, max_size=1, generic_plans=generic_plans)
        try:
            assert await pool.fetchval("SHOW statement_timeout") == "90s"
            if generic_plans:
                assert await pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        finally:
            await pool.close()
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "90s"
    finally:
        await engine.dispose()
