"""Postgres: the connection pool and versioned migrations (safe when many processes start)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from .retry import until_up
from .settings import DatabaseSettings

log = logging.getLogger(__name__)

_CONNECT_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("hookbus_common.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply pending migrations in ``schema``; returns the names applied.

    A transaction-scoped advisory lock serialises processes that start together, so each
    migration runs exactly once however many services start at the same moment.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"hookbus:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    for name in applied:
        log.info("applied migration", extra={"migration": name, "schema": schema})
    return applied


async def connect_once(settings: DatabaseSettings) -> asyncpg.Connection:
    async for attempt in until_up(settings.connect_timeout, _CONNECT_ERRORS):
        with attempt:
            return await asyncpg.connect(settings.url)
    raise AssertionError("unreachable")


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


def ended(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether a kept connection can no longer be used: the server ended it (the pool then
    takes back the connection it lent, and the proxy says so by refusing every call)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


class Kept:
    """A connection of ``pool`` kept between uses instead of given back after each.

    At low rates every commit is a round of its own, and taking a connection from the
    pool and giving it back (a proxy, a queue, timeouts) costs a tenth of a service's CPU
    per webhook. ``use`` lends the kept connection, unless the server ended it meanwhile,
    or else one from the pool; afterwards the connection is kept if none is (and
    ``keep``), or returned to the pool. One whose block raised always goes back to the
    pool, which replaces a broken one. ``close`` returns the kept one (the pool closes
    only once every connection it lent is back)."""

    def __init__(self, pool: asyncpg.Pool, *, keep: bool = True) -> None:
        self.pool = pool
        self.keep = keep
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._closed = False

    @property
    def kept(self) -> asyncpg.pool.PoolConnectionProxy | None:
        """The connection kept for the next ``use``, if any."""
        return self._conn

    @asynccontextmanager
    async def use(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection for the block. Users at the same time each get their own: the
        kept one goes to the first, the others' come from the pool."""
        conn, self._conn = self._conn, None
        if conn is not None and ended(conn):
            await self.pool.release(conn)
            conn = None
        if conn is None:
            conn = await self.pool.acquire()
        try:
            yield conn
        except BaseException:
            await self.pool.release(conn)
            raise
        if self.keep and not self._closed and self._conn is None:
            self._conn = conn
        else:
            await self.pool.release(conn)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)


@asynccontextmanager
async def open_pool(
    settings: DatabaseSettings, *, run_migrations: bool = True
) -> AsyncIterator[asyncpg.Pool]:
    """Migrate (unless told not to) and open a pool whose connections use the schema."""
    if run_migrations:
        conn = await connect_once(settings)
        try:
            await migrate(conn, settings.schema)
        finally:
            await conn.close()
    async for attempt in until_up(settings.connect_timeout, _CONNECT_ERRORS):
        with attempt:
            pool = await asyncpg.create_pool(
                settings.url,
                min_size=settings.pool_min,
                max_size=settings.pool_max,
                server_settings={"search_path": settings.schema, "application_name": "hookbus"},
                # The default reset costs a round trip per acquire; our connections hold
                # no session state to reset.
                reset=_no_reset,
            )
    try:
        yield pool
    finally:
        await pool.close()
