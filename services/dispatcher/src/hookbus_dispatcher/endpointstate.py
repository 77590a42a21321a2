"""An endpoint's durable health: whether it is disabled (``endpoint_state``, a read model
of the endpoint.disabled/.enabled events) and since when every attempt at it has failed
(``endpoint_failing``, operational)."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """What one look finds: ``disabled`` with its reason, and ``failing_since``."""

    disabled: bool = False
    reason: str = ""
    failing_since: datetime | None = None


def columns(param: str) -> str:
    """The SELECT columns that read the health of the endpoint named by ``param`` (e.g.
    ``$3``), for a caller's own statement; ``health_of`` reads them back."""
    return (
        f"(SELECT disabled FROM endpoint_state WHERE endpoint = {param}) AS disabled,"
        f" (SELECT reason FROM endpoint_state WHERE endpoint = {param}) AS reason,"
        f" (SELECT since FROM endpoint_failing WHERE endpoint = {param}) AS since"
    )


def health_of(row: asyncpg.Record) -> Health:
    """The health in a row selected with ``columns`` (an endpoint without rows is healthy)."""
    return Health(
        disabled=bool(row["disabled"]), reason=row["reason"] or "", failing_since=row["since"]
    )


async def failed(conn: asyncpg.Pool | asyncpg.Connection, endpoint: str, at: datetime) -> datetime:
    """Record a failed attempt at ``at``; return since when every attempt has failed."""
    since = await conn.fetchval(
        "INSERT INTO endpoint_failing (endpoint, since, last_failure) VALUES ($1, $2, $2)"
        " ON CONFLICT (endpoint) DO UPDATE SET last_failure = greatest("
        "endpoint_failing.last_failure, EXCLUDED.last_failure)"
        " RETURNING since",
        endpoint,
        at,
    )
    assert isinstance(since, datetime)
    return since


async def recovered(conn: asyncpg.Pool | asyncpg.Connection, endpoint: str) -> None:
    """An attempt succeeded (or the endpoint was disabled or enabled): the count restarts."""
    await conn.execute("DELETE FROM endpoint_failing WHERE endpoint = $1", endpoint)
