"""The delivery backlog by tenant and destination, read from Postgres on an interval.

What waits is durable wherever it waits (the bus, the read-ahead of some replica, the
retry and limit schedule, an ordering wait), and every such delivery is ``pending`` or
``retrying`` in the ``deliveries`` read model until it ends. So the count is one query,
the same from every replica and after any restart, unlike a process's own read-ahead
(``hookbus_dispatcher_backlog``).

The destination is named as the fair scheduler names it: the endpoint, ``notification:
<channel>``, or ``url:<host>`` for a ``url`` action. The read model keeps a ``url``
action's URL but not the endpoint or channel, which are read from the request's event:
by its sequence number (a delivery not yet attempted still carries its request's), else
by its correlation id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Final

import asyncpg
from prometheus_client import Gauge

from hookbus_common import events as ev

log = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 10.0
"""How often the gauge is read again from Postgres."""

BACKLOG = Gauge(
    "hookbus_delivery_backlog",
    "Deliveries not yet ended (pending or waiting for a retry or a limit), by tenant and"
    " destination, from Postgres: the same on every dispatcher replica",
    ["tenant", "endpoint"],
)

_REQUESTED = ev.DeliveryRequested.TYPE

QUERY = f"""
SELECT d.tenant,
       CASE WHEN d.url <> ''
            THEN 'url:' || lower(substring(d.url FROM '^[^:]*://(?:[^/]*@)?([^/]*)'))
            ELSE coalesce('notification:' || (coalesce(p.data, r.data)->>'notification'),
                          coalesce(p.data, r.data)->>'endpoint', '_')
       END AS destination,
       count(*) AS waiting
FROM deliveries d
LEFT JOIN events p
       ON d.url = '' AND p.seq = d.last_seq AND p.type = '{_REQUESTED}'
LEFT JOIN LATERAL (
    SELECT e.data FROM events e
    WHERE e.correlation_id = d.correlation_id AND e.type = '{_REQUESTED}'
      AND e.data->>'delivery_id' = d.delivery_id
    ORDER BY e.seq LIMIT 1
) r ON d.url = '' AND p.seq IS NULL
WHERE d.status IN ('pending', 'retrying')
GROUP BY 1, 2
"""


async def read(conn: asyncpg.Pool | asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Deliveries not yet ended, by (tenant, destination)."""
    rows = await conn.fetch(QUERY)
    return {(r["tenant"], r["destination"]): int(r["waiting"]) for r in rows}


class Reporter:
    """Sets :data:`BACKLOG` from :func:`read`; a (tenant, destination) that emptied is
    set to 0 (its series stays, so a dashboard sees it drop)."""

    def __init__(self, gauge: Gauge = BACKLOG) -> None:
        self.gauge = gauge
        self._seen: set[tuple[str, str]] = set()

    def set(self, backlog: Mapping[tuple[str, str], int]) -> None:
        for key in self._seen - backlog.keys():
            self.gauge.labels(*key).set(0)
        for key, n in backlog.items():
            self.gauge.labels(*key).set(n)
        self._seen |= set(backlog)

    async def refresh(self, pool: asyncpg.Pool) -> None:
        self.set(await read(pool))

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event, every: float) -> None:
        """Refresh every ``every`` seconds until ``stop`` is set; a failed read is logged
        and the last figures kept."""
        while not stop.is_set():
            try:
                await self.refresh(pool)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("could not read the delivery backlog", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
