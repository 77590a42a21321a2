"""Deliveries in order per key: requests of one tenant to one destination with the same
``ordering_key`` go one at a time, in the order they were requested (their sequence in
the log); a failing one, while it is retried, holds back only the requests of its key.

A request whose key has an earlier request not yet ended waits: it is noted in
``ordering_waits`` and put on the durable schedule (acked, holding no slot) a minute out,
as a safety net. When a request of the key ends (succeeded, failed or dead), the
dispatcher that ended it makes the next waiting one due at once. Both steps take the
key's advisory lock, so a request never waits for one that ended in between.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Final

import asyncpg

from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.events import DeliveryRequested
from hookbus_common.service import Runtime

from . import retryafter, schedule
from .delivery import attempts_made

log = logging.getLogger(__name__)

RECHECK: Final = 60.0
"""Seconds after which a waiting request looks again by itself (were the wake-up lost:
the dispatcher that ended the one before it died before waking it)."""

ENDED: Final = ("succeeded", "failed", "dead")

_DESTINATION = """CASE
    WHEN e.data->>'notification' IS NOT NULL THEN 'notification:' || (e.data->>'notification')
    WHEN e.data->>'endpoint' IS NOT NULL THEN e.data->>'endpoint'
    ELSE e.data->>'url' END"""

# $1 key, $2 tenant, $3 destination, $4 this request's seq.
_EARLIER = f"""
SELECT e.data->>'delivery_id'
FROM events e LEFT JOIN deliveries d ON d.delivery_id = e.data->>'delivery_id'
WHERE e.type = 'io.hookbus.delivery.requested.v1'
  AND (e.data->>'ordering_key') IS NOT NULL
  AND e.data->>'ordering_key' = $1 AND e.data->>'tenant' = $2 AND {_DESTINATION} = $3
  AND e.seq < $4
  AND coalesce(d.status, 'pending') NOT IN ('succeeded', 'failed', 'dead')
ORDER BY e.seq
LIMIT 1
"""


def destination(req: DeliveryRequested) -> str:
    """What order is kept within (with the tenant and the key), as ``_DESTINATION``."""
    if req.notification is not None:
        return f"notification:{req.notification}"
    return req.endpoint if req.endpoint is not None else req.url


async def _lock(conn: asyncpg.Connection, req: DeliveryRequested) -> None:
    key = f"hookbus-order:{req.tenant}:{destination(req)}:{req.ordering_key}"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)


async def wait_behind(
    pool: asyncpg.Pool,
    request_id: str,
    req: DeliveryRequested,
    clock: retryafter.Clock = retryafter.utcnow,
) -> str | None:
    """The earlier request of the key this one waits for (it is now noted as waiting and
    on the schedule), or ``None``: it may go now."""
    made = await attempts_made(pool, req.delivery_id)
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, req)
        seq = await conn.fetchval("SELECT seq FROM events WHERE id = $1", request_id)
        if seq is None:
            return None  # not in the log (a test's message): nothing to order against
        earlier = await conn.fetchval(_EARLIER, req.ordering_key, req.tenant, destination(req), seq)
        if earlier is None:
            await conn.execute("DELETE FROM ordering_waits WHERE delivery_id = $1", req.delivery_id)
            return None
        await conn.execute(
            "INSERT INTO ordering_waits (delivery_id, tenant, destination, ordering_key, seq)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (delivery_id) DO NOTHING",
            req.delivery_id, req.tenant, destination(req), req.ordering_key, seq,
        )  # fmt: skip
        due = clock() + timedelta(seconds=RECHECK)
        await schedule.put(conn, req.delivery_id, request_id, made + 1, due, waited=True)
    return str(earlier)


async def wake_next(
    pool: asyncpg.Pool, req: DeliveryRequested, clock: retryafter.Clock = retryafter.utcnow
) -> str | None:
    """``req`` ended: make the next waiting request of its key due now; its delivery id."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, req)
        nxt = await conn.fetchval(
            "DELETE FROM ordering_waits WHERE delivery_id = ("
            " SELECT delivery_id FROM ordering_waits"
            " WHERE tenant = $1 AND destination = $2 AND ordering_key = $3"
            " ORDER BY seq LIMIT 1) RETURNING delivery_id",
            req.tenant, destination(req), req.ordering_key,
        )  # fmt: skip
        if nxt is None:
            return None
        await conn.execute(
            "UPDATE delivery_schedule SET due_at = $2 WHERE delivery_id = $1", nxt, clock()
        )
    return str(nxt)


def in_order(
    handler: Handler,
    pool: asyncpg.Pool,
    *,
    wake: Callable[[], None] = lambda: None,
    clock: retryafter.Clock = retryafter.utcnow,
) -> Handler:
    """``handler`` with deliveries that carry an ``ordering_key`` kept in order per key."""

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        req = incoming.event.data
        if not isinstance(req, DeliveryRequested) or req.ordering_key is None:
            async for out in handler(incoming):
                yield out
            return
        if await wait_behind(pool, incoming.event.id, req, clock) is not None:
            return
        async for out in handler(incoming):
            yield out
        status = await pool.fetchval(
            "SELECT status FROM deliveries WHERE delivery_id = $1", req.delivery_id
        )
        if status in ENDED and await wake_next(pool, req, clock) is not None:
            wake()

    return handle


def ordered(
    make: Callable[[Runtime], Handler], wake: Callable[[], None] = lambda: None
) -> Callable[[Runtime], Handler]:
    """``make`` (a service's handler factory) with its handler keeping order per key."""

    def build(rt: Runtime) -> Handler:
        return in_order(make(rt), rt.pool, wake=wake)

    return build
