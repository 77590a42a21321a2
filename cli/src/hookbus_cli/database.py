"""How CLI commands reach Postgres: within seconds, or with one line saying why not.

Services retry their connection for ``database.connect_timeout`` (servers may start in any
order); a person at a prompt should not wait that long to learn that nothing is running.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import msgspec

from hookbus_common import db
from hookbus_common.settings import DatabaseSettings, redact_url

# Seconds of connection retries: enough for a Postgres that is just starting.
CONNECT_TIMEOUT = 3.0
# One attempt may hang (an address that drops packets); this bounds the whole try.
_HARD_LIMIT = CONNECT_TIMEOUT + 2.0

HOW_TO_START = "start it with `hookbus up`, or set HOOKBUS_DATABASE__URL"


class DatabaseUnreachable(Exception):
    """Postgres could not be reached or would not let us in; the message is for people."""


def shown(url: str) -> str:
    """The URL as it may be printed: no password, in the user part or in the query."""
    return re.sub(r"([?&]password=)[^&]*", r"\1***", redact_url(url))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:.0f} s"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def connect(settings: DatabaseSettings) -> asyncpg.Connection:
    """One connection, retried for a few seconds at most; DatabaseUnreachable otherwise."""
    quick = msgspec.structs.replace(
        settings, connect_timeout=min(settings.connect_timeout, CONNECT_TIMEOUT)
    )
    where = shown(settings.url)
    try:
        async with asyncio.timeout(_HARD_LIMIT):
            return await db.connect_once(quick)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
        # TimeoutError is an OSError: the hard limit lands here too.
        raise DatabaseUnreachable(
            f"cannot reach Postgres at {where} ({_reason(exc)}) — {HOW_TO_START}"
        ) from None
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
        raise DatabaseUnreachable(f"Postgres at {where} refused the connection: {exc}") from None
    except asyncpg.ClientConfigurationError as exc:
        raise DatabaseUnreachable(f"the database URL {where} is not usable: {exc}") from None


@asynccontextmanager
async def connection(
    settings: DatabaseSettings, *, migrate: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A connection using the installation's schema (migrated first if ``migrate``)."""
    conn = await connect(settings)
    try:
        if migrate:
            await db.migrate(conn, settings.schema)
        await conn.execute(f'SET search_path TO "{settings.schema}"')
        yield conn
    finally:
        await conn.close()
