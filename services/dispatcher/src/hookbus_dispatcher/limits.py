"""Limits that hold across dispatcher replicas: request rates (a GCRA token bucket) and
requests in flight at once (leases), both kept in Postgres (migration 0013), so three
replicas together send what one limit allows, not three times it.

A rate is ``"50/s"``, ``"300/min"`` or ``"1000/h"``; ``burst`` is how many requests may go
at once after a quiet spell (default: one second's worth, at least 1). Over any window
of N seconds at most ``rate * N + burst`` requests are admitted.

The bucket is GCRA: one number per key, the theoretical arrival time (``tat``) of the
next request at the steady rate. A request is admitted when, with it counted,
``tat`` runs no further ahead of now than ``burst`` emission intervals; otherwise it is
told how long to wait. One ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per request,
timed by Postgres's clock (the replicas' own clocks never matter).
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import asyncpg
import msgspec

from hookbus_common.settings import STRUCT

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT: Final = {
    **dict.fromkeys(("s", "sec", "second"), 1),
    **dict.fromkeys(("m", "min", "minute"), 60),
    **dict.fromkeys(("h", "hour"), 3600),
}

LEASE_MARGIN: Final = 30.0
"""Seconds a lease on a place in flight outlives its request's timeout: a dispatcher that
dies mid-request gives its place back this long after the request would have ended."""


def parse_rate(text: str) -> float:
    """Requests per second of ``"50/s"``, ``"300/min"``, ``"1000/h"``; ``ValueError``."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f'{text!r} is not a rate (like "50/s", "300/min" or "1000/h")')
    per_second = float(m.group(1)) / _UNIT[m.group(2)]
    if per_second <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return per_second


@dataclass(frozen=True)
class Rate:
    """A steady rate (requests per second) and the burst allowed on top of it."""

    per_second: float
    burst: int

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @classmethod
    def of(cls, rate: str | None, burst: int | None) -> Rate | None:
        if rate is None:
            return None
        per_second = parse_rate(rate)
        return cls(per_second, burst if burst is not None else max(1, math.ceil(per_second)))


def gcra(tat: float | None, now: float, rate: Rate) -> tuple[float, float]:
    """One request against a bucket whose theoretical arrival time is ``tat`` (``None``:
    never used): ``(new tat, wait)``; admitted when ``wait`` is 0 (then ``new tat`` is to
    be stored), else the seconds until it would be (the bucket unchanged).

    The same arithmetic as :data:`_TAKE`, in Python for tests and to read."""
    t = rate.interval
    start = now if tat is None else max(tat, now)
    new = start + t
    if new - now <= rate.burst * t + 1e-9:
        return new, 0.0
    return start, max(new - rate.burst * t - now, 1e-3)


# $1 key, $2 emission interval, $3 burst, $4 now (NULL: Postgres's clock). Admits (a row
# with wait 0) or returns nothing (then _WAIT says how long).
_TAKE = """
WITH c AS (SELECT coalesce($4::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
INSERT INTO rate_limits AS r (key, tat)
SELECT $1, c.now + $2::float8 FROM c
ON CONFLICT (key) DO UPDATE
   SET tat = greatest(r.tat, EXCLUDED.tat - $2::float8) + $2::float8
 WHERE greatest(r.tat, EXCLUDED.tat - $2::float8) + $2::float8 - (EXCLUDED.tat - $2::float8)
       <= $3::float8 * $2::float8 + 1e-9
RETURNING 0.0::float8 AS wait
"""

_WAIT = """
SELECT greatest(r.tat + $2::float8 - $3::float8 * $2::float8
                - coalesce($4::float8, extract(epoch FROM clock_timestamp())::float8), 0.001)
FROM rate_limits r WHERE r.key = $1
"""


async def take(
    conn: asyncpg.Pool | asyncpg.Connection, key: str, rate: Rate, now: float | None = None
) -> float:
    """Count one request against ``key``'s bucket if it fits: 0.0, admitted; else the
    seconds to wait (nothing counted). ``now`` (seconds since the epoch) is for tests;
    by default Postgres's clock decides, the same for every replica."""
    row = await conn.fetchrow(_TAKE, key, rate.interval, float(rate.burst), now)
    if row is not None:
        return 0.0
    wait = await conn.fetchval(_WAIT, key, rate.interval, float(rate.burst), now)
    return float(wait) if wait is not None else rate.interval


_LEASE = """
WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
     gone AS (DELETE FROM limit_leases l USING c WHERE l.key = $1 AND l.expires_at < c.now)
INSERT INTO limit_leases (key, holder, expires_at)
SELECT $1, $2, c.now + $4::float8 FROM c
WHERE (SELECT count(*) FROM limit_leases l, c
        WHERE l.key = $1 AND l.expires_at >= c.now) < $3
RETURNING holder
"""


async def lease(pool: asyncpg.Pool, key: str, cap: int, seconds: float) -> str | None:
    """A place among ``cap`` requests in flight to ``key`` (all replicas together), held
    for at most ``seconds``: its holder id, to :func:`release`; ``None`` when all are
    taken. Serialised per key by an advisory lock, so two replicas never both take the
    last place."""
    holder = secrets.token_hex(8)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('hookbus-limit:' || $1))", key)
        got = await conn.fetchval(_LEASE, key, holder, cap, seconds)
    return str(got) if got is not None else None


async def release(pool: asyncpg.Pool, key: str, holder: str) -> None:
    await pool.execute("DELETE FROM limit_leases WHERE key = $1 AND holder = $2", key, holder)


# ----------------------------------------------------------------------- config

Overflow = Literal["spill", "block"]


class TenantLimits(msgspec.Struct, **STRUCT):
    """``[dispatcher.tenants.<name>]``: a tenant's share and limits."""

    # Its share of the sending slots against other tenants with waiting deliveries.
    weight: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    # Requests per second (all its endpoints and URLs together, all replicas together).
    rate: str | None = None
    burst: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # What happens to new messages once its backlog passes max_backlog.
    overflow: Overflow = "spill"
    max_backlog: Annotated[int, msgspec.Meta(ge=1)] = 10_000

    def limit(self) -> Rate | None:
        return Rate.of(self.rate, self.burst)
