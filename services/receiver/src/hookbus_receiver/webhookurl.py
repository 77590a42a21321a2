"""The image-push URL's secret (``/api/webhook/<secret>``): made once, kept in Postgres."""

from __future__ import annotations

import hmac
import uuid
from typing import Final

import asyncpg

PATH: Final = "/api/webhook/"


async def current(conn: asyncpg.Connection) -> str | None:
    value = await conn.fetchval("SELECT secret FROM webhook_url WHERE id = 1")
    return str(value) if value is not None else None


async def ensure(conn: asyncpg.Connection) -> str:
    """The secret, made on first use; receivers starting together all end up with one."""
    await conn.execute(
        "INSERT INTO webhook_url (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        str(uuid.uuid4()),
    )
    secret = await current(conn)
    if secret is None:  # only if someone deleted the row between the two statements
        return await ensure(conn)
    return secret


async def regenerate(conn: asyncpg.Connection) -> str:
    """Replace the secret; the old URL stops working at once (receivers look it up per call)."""
    secret = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO webhook_url (id, secret) VALUES (1, $1)"
        " ON CONFLICT (id) DO UPDATE SET secret = EXCLUDED.secret, created_at = now()",
        secret,
    )
    return secret


def matches(expected: str | None, given: str) -> bool:
    """Constant-time comparison of the secret in a request path with the stored one."""
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))
