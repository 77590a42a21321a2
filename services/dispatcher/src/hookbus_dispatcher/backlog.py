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

# The request of a delivery attempted already (its ``last_seq`` is a later event) is
# found among its chain's events by the correlation index alone: ``OFFSET 0`` keeps the
# planner from also reading the type index, which holds every request ever made (a
# bitmap AND with it read the whole index once per waiting delivery, which made each
# refresh cost the backlog times the log). COALESCE looks only when the request is
# not the delivery's last event, and a ``url`` action's destination needs no event at all.
QUERY = f"""
WITH open AS (
    SELECT delivery_id, tenant, url, correlation_id, last_seq FROM deliveries
    WHERE status IN ('pending', 'retrying')
), named AS (
    SELECT o.tenant, coalesce(p.data, (
        SELECT c.data FROM (
            SELECT e.seq, e.type, e.data FROM events e
            WHERE e.correlation_id = o.correlation_id OFFSET 0
        ) c
        WHERE c.type = '{_REQUESTED}' AND c.data->>'delivery_id' = o.delivery_id
        ORDER BY c.seq LIMIT 1
    )) AS data
    FROM open o
    LEFT JOIN events p ON p.seq = o.last_seq AND p.type = '{_REQUESTED}'
    WHERE o.url = ''
)
SELECT tenant, destination, count(*) AS waiting FROM (
    SELECT tenant, 'url:' || lower(substring(url FROM '^[^:]*://(?:[^/]*@)?([^/]*)'))
    FROM open WHERE url <> ''
    UNION ALL
    SELECT tenant, coalesce('notification:' || (data->>'notification'), data->>'endpoint', '_')
    FROM named
) AS w (tenant, destination)
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
