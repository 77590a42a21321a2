"""When deliveries are tried again, and the durable schedule that holds them meanwhile.

A failed attempt's delivery waits in Postgres (``delivery_schedule``), not in JetStream:
its message is acked, so a dead endpoint with thousands of pending retries holds none of
the dispatcher's capacity (invariant 9). When a row falls due, a :class:`Scheduler` (one
runs in every dispatcher) publishes the delivery's request again and deletes the row, in
one transaction; the handler then makes the next attempt, numbered from the log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import msgspec
from prometheus_client import Counter, Gauge

from hookbus_common.bus import Bus
from hookbus_common.eventlog import raw_event
from hookbus_common.outage import is_outage

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds to wait after attempts 1, 2, … (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h): eight
attempts over about a day and a half, as Svix does."""

JITTER: Final = 0.1
"""Each wait is spread by up to this fraction either way, so deliveries that failed
together (an endpoint's outage) do not all come back at the same moment."""

REPUBLISHED = Counter(
    "hookbus_delivery_retries_published_total",
    "Deliveries published again because their next attempt fell due",
)
WAITING = Gauge(
    "hookbus_delivery_retries_due_soonest_seconds",
    "Seconds until the soonest scheduled delivery attempt is due (negative: overdue)",
)


def retry_delay(
    number: int, schedule: Sequence[float], rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt ``number`` (1-based): the schedule's entry for
    it (its last entry for attempts beyond it), spread by :data:`JITTER`."""
    base = schedule[min(number, len(schedule)) - 1] if schedule else 0.0
    return base * (1 - JITTER + 2 * JITTER * rand())


async def put(
    conn: asyncpg.Pool | asyncpg.Connection,
    delivery_id: str,
    request_id: str,
    attempt: int,
    due: datetime,
    *,
    waited: bool = False,
) -> None:
    """Schedule ``attempt`` of a delivery at ``due`` (idempotent: the same call again, as
    a redelivered message makes it, changes nothing). ``waited``: a limit made it wait
    (``limits``), no attempt failed."""
    await conn.execute(
        "INSERT INTO delivery_schedule (delivery_id, request_id, attempt, due_at, waited)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (delivery_id) DO UPDATE"
        " SET request_id = EXCLUDED.request_id, attempt = EXCLUDED.attempt,"
        " due_at = EXCLUDED.due_at, waited = EXCLUDED.waited",
        delivery_id,
        request_id,
        attempt,
        due,
        waited,
    )


def message_id(request_id: str, attempt: int, due: datetime, waited: bool) -> str:
    """The bus message id a due row is published under: one per attempt, and for a wait
    one per due time (a delivery may wait several times before one attempt)."""
    if waited:
        return f"{request_id}/wait/{attempt}/{int(due.timestamp() * 1000)}"
    return f"{request_id}/retry/{attempt}"


async def next_due(conn: asyncpg.Pool | asyncpg.Connection, delivery_id: str) -> datetime | None:
    value = await conn.fetchval(
        "SELECT due_at FROM delivery_schedule WHERE delivery_id = $1", delivery_id
    )
    return value if isinstance(value, datetime) else None


_DUE = """
SELECT s.delivery_id, s.attempt, s.due_at, s.waited, e.id, e.type, e.source, e.subject,
       e.bus_subject, e.tenant, e.correlation_id, e.causation_id, e.time, e.data::text AS data
FROM delivery_schedule s JOIN events e ON e.id = s.request_id
WHERE s.due_at <= $1
ORDER BY s.due_at
LIMIT $2
FOR UPDATE OF s SKIP LOCKED
"""


def _payload(row: asyncpg.Record) -> bytes:
    return msgspec.json.encode(raw_event(row))


class Scheduler:
    """Publishes deliveries whose next attempt is due; one runs in every dispatcher.

    Rows are claimed with ``SKIP LOCKED``, so replicas share the work and never publish
    one row twice at once; a publish whose transaction then fails is published again
    under the same message id (``<request id>/retry/<attempt>``), which JetStream drops
    as a duplicate. Idle, it looks every ``idle_interval`` seconds at most (for rows other
    replicas put); rows this process puts wake it (:meth:`wake`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        clock: Callable[[], datetime],
        batch: int = 100,
        idle_interval: float = 10.0,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.clock = clock
        self.batch = batch
        self.idle_interval = idle_interval
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look again now: a row was put that may be due sooner than the next look."""
        self._wakeup.set()

    async def round(self) -> int:
        """Publish what is due (up to ``batch`` rows); return how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_DUE, self.clock(), self.batch)
            if not rows:
                return 0
            await self.bus.publish_many(
                [
                    (
                        r["bus_subject"],
                        message_id(r["id"], r["attempt"], r["due_at"], r["waited"]),
                        _payload(r),
                    )
                    for r in rows
                ]
            )
            await conn.execute(
                "DELETE FROM delivery_schedule WHERE delivery_id = ANY($1::text[])",
                [r["delivery_id"] for r in rows],
            )
        REPUBLISHED.inc(len(rows))
        return len(rows)

    async def _sleep_for(self) -> float:
        soonest = await self.pool.fetchval("SELECT min(due_at) FROM delivery_schedule")
        if not isinstance(soonest, datetime):
            WAITING.set(0)
            return self.idle_interval
        wait = (soonest - self.clock()) / timedelta(seconds=1)
        WAITING.set(wait)
        return min(max(wait, 0.0), self.idle_interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish due rows until ``stop``; an outage or failed round is tried again."""
        while not stop.is_set():
            self._wakeup.clear()
            try:
                while await self.round() == self.batch:
                    pass  # more may be due at once
                wait = await self._sleep_for()
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("delivery schedule round failed")
                wait = 1.0
            waker = asyncio.ensure_future(self._wakeup.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waker, stopper}, timeout=wait, return_when="FIRST_COMPLETED")
            finally:
                waker.cancel()
                stopper.cancel()
