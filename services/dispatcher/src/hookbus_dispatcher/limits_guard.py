"""The limits in front of the dispatcher's handler: a delivery over its endpoint's or its
tenant's rate, or over its endpoint's ``max_in_flight`` (all replicas together), is not
sent now. It waits on the durable schedule (``delivery_schedule``, marked ``waited``) and
its message is acked, so it holds no consumer slot; it never fails for it. When it is
due, the schedule publishes its request again and it is tried against the limits anew.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Final

import asyncpg
from prometheus_client import Counter

from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.events import DeliveryRequested
from hookbus_common.service import Runtime

from . import limits, retryafter, schedule
from .config import DispatcherConfig, Endpoint
from .delivery import attempts_made
from .limits import Rate, TenantLimits

log = logging.getLogger(__name__)

IN_FLIGHT_WAIT: Final = 1.0
"""Seconds a delivery waits when its endpoint has max_in_flight requests in flight (±50%)."""

WAITED = Counter(
    "hookbus_delivery_limit_waits_total",
    "Deliveries made to wait by a limit, by kind (endpoint_rate, tenant_rate, in_flight)",
    ["kind"],
)


def rates_for(
    req: DeliveryRequested, endpoint: Endpoint | None, tenant: TenantLimits | None
) -> list[tuple[str, str, Rate]]:
    """The buckets a request counts against: (kind, key, rate)."""
    out: list[tuple[str, str, Rate]] = []
    limit = tenant.limit() if tenant is not None else None
    if limit is not None:
        out.append(("tenant_rate", f"tenant:{req.tenant}", limit))
    limit = endpoint.limit() if endpoint is not None else None
    if limit is not None and req.endpoint:
        out.append(("endpoint_rate", f"endpoint:{req.endpoint}", limit))
    return out


def guard(
    handler: Handler,
    pool: asyncpg.Pool,
    *,
    endpoints: Mapping[str, Endpoint],
    tenants: Mapping[str, TenantLimits],
    wake: Callable[[], None] = lambda: None,
    clock: retryafter.Clock = retryafter.utcnow,
    rand: Callable[[], float] = random.random,
) -> Handler:
    """``handler`` behind the limits (the whole handler when nothing is limited)."""
    if not tenants and not any(
        ep.rate is not None or ep.max_in_flight is not None for ep in endpoints.values()
    ):
        return handler

    async def wait(incoming: Incoming, seconds: float, kind: str) -> None:
        req = incoming.event.data
        made = await attempts_made(pool, req.delivery_id)
        due = clock() + timedelta(seconds=seconds)
        await schedule.put(pool, req.delivery_id, incoming.event.id, made + 1, due, waited=True)
        WAITED.labels(kind).inc()
        wake()

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        req = incoming.event.data
        if not isinstance(req, DeliveryRequested) or req.notification is not None:
            async for out in handler(incoming):
                yield out
            return
        endpoint = endpoints.get(req.endpoint) if req.endpoint else None
        holder: str | None = None
        key = f"endpoint:{req.endpoint}"
        if endpoint is not None and endpoint.max_in_flight is not None:
            seconds = endpoint.timeout + limits.LEASE_MARGIN
            holder = await limits.lease(pool, key, endpoint.max_in_flight, seconds)
            if holder is None:
                await wait(incoming, IN_FLIGHT_WAIT * (0.5 + rand()), "in_flight")
                return
        try:
            for kind, bucket, rate in rates_for(req, endpoint, tenants.get(req.tenant)):
                seconds = await limits.take(pool, bucket, rate)
                if seconds > 0:
                    # A little spread, so deliveries that waited together do not all
                    # come back at the same instant.
                    await wait(incoming, seconds + rate.interval * rand(), kind)
                    return
            async for out in handler(incoming):
                yield out
        finally:
            if holder is not None:
                await limits.release(pool, key, holder)

    return handle


def guarded(
    make: Callable[[Runtime], Handler],
    settings: DispatcherConfig,
    wake: Callable[[], None] = lambda: None,
) -> Callable[[Runtime], Handler]:
    """``make`` (a service's handler factory) with its handler behind the limits;
    ``wake`` tells the schedule a wait was put (it may be due before its next look)."""

    def build(rt: Runtime) -> Handler:
        return guard(
            make(rt),
            rt.pool,
            endpoints=settings.endpoints,
            tenants=settings.dispatcher.tenants,
            wake=wake,
        )

    return build
