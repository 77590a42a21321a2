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
