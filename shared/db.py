"""The database boundary: engine and session factory (built by the caller, never at import)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeAlias

import asyncpg
import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.errors import JobRequestError
from shared.settings import Settings

# Every statement's bound on the server, past every bound our clients set (at most 60 s,
# an ANALYZE): a client that gives up on a statement (its timeout) may leave it running
# on the server (the cancel request is best effort), and one retried each cycle would
# pile up copies of itself there. The vacuum's own connection is not bounded.
SERVER_SETTINGS = {"statement_timeout": "90s"}


def create_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        # jsonb in and out through orjson: the stdlib json module is the slow part of
        # large batches.
        json_serializer=lambda v: orjson.dumps(v).decode(),
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 30, "server_settings": SERVER_SETTINGS},
    )


# Planned once per connection, not on every execution. PostgreSQL's default ("auto")
# re-plans a prepared statement each time while it guesses a custom plan is cheaper,
# and for the scheduler's claim on a large table planning costs more than running
# (docs/performance-history.md). Only for statements whose best plan does not depend on their
# parameters. And by index where there is one: a plan made once must not rest on the
# statistics of the moment, and the ready queue's swing by the second (a few rows and
# many empty pages after a vacuum took the claim to a scan and sort of the whole queue,
# then tens of thousands of rows a batch later).
GENERIC_PLANS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


async def plan_as_the_scheduler(conn: asyncpg.Connection) -> None:
    """``GENERIC_PLANS`` for the rest of ``conn``'s session: a bench or a test that runs
    a statement as the scheduler's pool plans it."""
    await conn.execute("; ".join(f"SET {k} = {v}" for k, v in GENERIC_PLANS.items()))


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, generic_plans: bool = False
) -> asyncpg.Pool:
    """A plain asyncpg pool (jsonb as Python values) for the hottest statements, where
    the ORM's and a transaction's round trips cost more than the statement itself.
    ``generic_plans``: see ``GENERIC_PLANS``."""

    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )

    async def reset(conn: asyncpg.Connection) -> None:
        # The default reset is a round trip per release (UNLISTEN, RESET ALL, ...); the
        # statements run through this pool change no session state (single autocommit
        # statements, or a ``pool_transaction`` that ends before release), so there is
        # nothing to reset.
        if conn.is_in_transaction():  # never expected; be safe rather than fast
            await conn.reset()

    pool = await asyncpg.create_pool(
        settings.sync_database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=5,
        command_timeout=30,
        init=init,
        reset=reset,
        server_settings=SERVER_SETTINGS | (GENERIC_PLANS if generic_plans else {}),
    )
    assert pool is not None
    return pool


# What a statement on a raw pool raises when the database is unreachable or refuses it.
RAW_DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# Bounds on a raw statement: waiting for a pooled connection, and the statement itself.
ACQUIRE_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 10.0


async def pool_fetch(pool: asyncpg.Pool, sql: str, *args: object) -> list[asyncpg.Record]:
    """One statement on ``pool`` (its own transaction), bounded in time; a connection
    that failed for another reason than the statement itself (the server terminated it
    while it idled in the pool, an outage) is dropped, never handed to the next caller."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            return await conn.fetch(sql, *args, timeout=STATEMENT_TIMEOUT)  # type: ignore[no-any-return]
        except Exception as exc:
            _drop_if_broken(conn, exc)
            raise


def _drop_if_broken(conn: asyncpg.Connection, exc: Exception) -> bool:
    """Terminate ``conn`` unless ``exc`` was only its statement's own error; whether it
    was terminated."""
    if isinstance(exc, asyncpg.PostgresError) and not is_db_outage(exc):
        return False
    with contextlib.suppress(asyncpg.InterfaceError):  # already gone
        conn.terminate()
    return True


def _is_open(conn: asyncpg.Connection) -> bool:
    """False once the server closed ``conn`` (asyncpg then gives its pool slot back and
    the proxy we hold refuses every call)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


class KeptConnection:
    """One connection of ``pool`` kept from one statement to the next, for a caller that
    runs its statements one after another (the scheduler's cycle). Taking a connection
    from an asyncpg pool and giving it back costs about as much CPU as a small
    statement's own client side: 60-80 µs here (docs/performance-history.md).

    Each statement runs as ``pool_fetch`` runs it: bounded in time, in its own
    transaction. A connection the server closed meanwhile is replaced before the next
    statement; one that failed for another reason than its statement is dropped, and
    one whose statement was cancelled goes back to the pool (which has the server
    cancel the statement first). A statement that comes while another one runs on it,
    or after ``close``, runs on a pooled connection of its own, as before: slower, never
    wrong. ``close`` before the pool's (a pool waits for its connections); ``release``
    when the caller will not run statements for a while."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: asyncpg.Connection | None = None
        self._in_use = asyncio.Lock()
        self._closed = False

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        if self._closed or self._in_use.locked():
            return await pool_fetch(self.pool, sql, *args)
        async with self._in_use:
            if not self.holds_open:  # none yet, or closed by the server meanwhile
                await self._give_back()
            if self._conn is None:
                self._conn = await self.pool.acquire(timeout=ACQUIRE_TIMEOUT)
            conn = self._conn
            try:
                return await conn.fetch(sql, *args, timeout=STATEMENT_TIMEOUT)  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                await self._give_back()
                raise
            except Exception as exc:
                if _drop_if_broken(conn, exc):
                    await self._give_back()
                raise

    @property
    def holds_open(self) -> bool:
        """Whether it keeps a connection that asyncpg still knows open (it learns of a
        close by the server when its socket reports it)."""
        return self._conn is not None and _is_open(self._conn)

    async def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)

    async def release(self) -> None:
        """Give the connection back to the pool now (when the statement running on it,
        if any, ended); the next statement takes one again."""
        async with self._in_use:
            await self._give_back()

    async def close(self) -> None:
        """``release``, and from now on every statement takes a pooled connection."""
        self._closed = True
        await self.release()


# Where a statement runs: the pool or a connection it keeps (its own transaction), a
# connection, or a session (on the asyncpg connection under it, inside the session's
# transaction).
Db: TypeAlias = asyncpg.Pool | KeptConnection | asyncpg.Connection | AsyncSession


@contextlib.asynccontextmanager
async def pool_transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool`` inside one transaction (committed when the block ends,
    rolled back if it raises); dropped like in ``pool_fetch`` when it failed for another
    reason than a statement or a request's refusal."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            async with conn.transaction():
                yield conn
        except JobRequestError:
            # Refused by a check of ours inside the block; the rollback went through
            # (else its own error would be the one raised): the connection is clean.
            raise
        except Exception as exc:
            _drop_if_broken(conn, exc)
            raise


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it is missing. True if created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError(f"DATABASE_URL names no database: {database_url}")
    admin = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database="postgres",
    )
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await admin.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await admin.close()


# SQLSTATE classes that mean "the database is not there right now", not "bad query":
# 08 connection exception, 53 insufficient resources, 57 operator intervention
# (shutdown, terminated backend), and 55000 for "not currently accepting connections".
_OUTAGE_SQLSTATE_PREFIXES = ("08", "53", "57")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient_conflict(exc: BaseException) -> bool:
    """True when ``exc`` is a deadlock or serialization failure: the transaction was
    rolled back whole and the same request, tried again, normally succeeds."""
    return any(getattr(e, "sqlstate", None) in ("40P01", "40001") for e in exception_chain(exc))


def is_db_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable (retry later), not a bad query."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    for current in exception_chain(exc):
        if isinstance(current, OperationalError | InterfaceError | PoolTimeout):
            return True
        if isinstance(current, ConnectionError | OSError | asyncio.TimeoutError):
            return True
        if isinstance(current, asyncpg.exceptions.InterfaceError):
            return True  # "connection was closed in the middle of operation"
        if isinstance(current, asyncpg.exceptions.InternalClientError):
            return True  # a pooled connection the server terminated while it was idle
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith(_OUTAGE_SQLSTATE_PREFIXES) or sqlstate == "55000"
        ):
            return True
    return False


async def session_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under ``session``, inside the session's transaction, so the
    job wing's statements (one access style: asyncpg, ``$n``) commit or roll back with
    the session's ORM work. What the session holds unflushed is flushed first, so those
    statements see it (ORM objects they change are stale until refreshed)."""
    await session.flush()
    connection = await session.connection()
    adapted = (await connection.get_raw_connection()).dbapi_connection
    # SQLAlchemy's adapter sends BEGIN lazily, before its own first statement: a
    # statement run on the driver before that would commit on its own.
    if adapted._transaction is None:  # type: ignore[union-attr]
        try:
            await adapted._start_transaction()  # type: ignore[union-attr]
        except Exception as exc:
            # Only a broken connection refuses BEGIN: say so as SQLAlchemy would, and
            # keep the connection out of the pool.
            await connection.invalidate()
            raise OperationalError("BEGIN", None, exc, connection_invalidated=True) from exc
    return adapted._connection  # type: ignore[union-attr,no-any-return]


async def fetch(db: Db, statement: str, *args: object) -> list[asyncpg.Record]:
    """Run one ``$n`` statement where ``db`` says (see ``Db``)."""
    if isinstance(db, KeptConnection):
        return await db.fetch(statement, *args)
    if isinstance(db, asyncpg.Pool):
        return await pool_fetch(db, statement, *args)
    conn = await session_connection(db) if isinstance(db, AsyncSession) else db
    return await conn.fetch(statement, *args)  # type: ignore[no-any-return]


def json_text(value: Any) -> str:
    """A JSON parameter as text, cast in SQL (``$n::text::jsonb``): the pool and a
    session's connection decode jsonb alike but encode it differently."""
    return orjson.dumps(value).decode()
