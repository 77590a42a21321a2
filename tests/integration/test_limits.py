"""Limits across replicas, on real NATS and Postgres: two dispatcher consume loops on one
durable send no more than one rate allows (counted at the sink), no more than an
endpoint's max_in_flight at once between them, and nothing over a limit fails: it waits
and goes later. The GCRA bucket itself in Postgres, on a fake clock."""

from __future__ import annotations

import contextlib
import math
import threading

import httpx
import pytest

from hookbus_common.service import Runtime
from hookbus_dispatcher import limits
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.limits import Rate, TenantLimits
from hookbus_dispatcher.limits_guard import WAITED

from .test_fairness import (
    Loop,
    Sink,
    client,
    dispatcher_config,
    held_endpoint,
    request,
    sink,
    until,
)

pytestmark = pytest.mark.integration

__all__ = ["client", "sink"]  # fixtures


async def test_the_bucket_in_postgres_on_a_fake_clock(rt: Runtime) -> None:
    rate = Rate(10.0, 3)
    now = 1_000_000.0
    waits = [await limits.take(rt.pool, "endpoint:x", rate, now) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.1)
    assert waits[4] == pytest.approx(0.1)  # a denied request counts nothing
    assert await limits.take(rt.pool, "endpoint:x", rate, now + 0.1) == 0.0
    assert await limits.take(rt.pool, "endpoint:x", rate, now + 0.1) > 0
    # Another key has its own bucket; a quiet spell refills up to the burst, no more.
    assert await limits.take(rt.pool, "endpoint:y", rate, now) == 0.0
    later = now + 60
    assert [await limits.take(rt.pool, "endpoint:x", rate, later) for _ in range(4)][3] > 0


async def test_leases_hold_a_cap_and_give_places_back(rt: Runtime) -> None:
    one = await limits.lease(rt.pool, "endpoint:z", 2, 30)
    two = await limits.lease(rt.pool, "endpoint:z", 2, 30)
    assert one
    assert two
    assert one != two
    assert await limits.lease(rt.pool, "endpoint:z", 2, 30) is None
    await limits.release(rt.pool, "endpoint:z", one)
    assert await limits.lease(rt.pool, "endpoint:z", 2, 30) is not None
    # A holder that died: its lease expires.
    assert await limits.lease(rt.pool, "endpoint:gone", 1, 0.0) is not None
    await until(lambda: _lease_free(rt, "endpoint:gone"))


async def _lease_free(rt: Runtime, key: str) -> bool:
    holder = await limits.lease(rt.pool, key, 1, 30)
    return holder is not None


ARRIVAL_JITTER = 0.3
"""Seconds by which one request may arrive later than another sent after it."""


def _waits(kind: str) -> float:
    return WAITED.labels(kind)._value.get()  # type: ignore[no-any-return]


def _most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        most = max(most, j - i)
    return most


async def test_an_endpoint_rate_holds_for_two_replicas_together(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    per_second, burst, n = 10, 5, 45
    endpoints = {
        "billing": Endpoint(
            url=sink.url, tenant="a", allow_private=True, rate=f"{per_second}/s", burst=burst
        )
    }
    settings = dispatcher_config(max_in_flight=8, endpoints=endpoints)
    await rt.outbox.commit_and_publish([request("a", i, endpoint="billing") for i in range(n)])
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(Loop(rt, client, settings, max_in_flight=8))
        await until(lambda: len(sink.arrivals) >= n, timeout=120)
    times = [t for _d, _t, t in sink.arrivals]
    span = max(times) - min(times)
    # All were sent (none failed for waiting), once each ...
    assert sorted(d for d, _t, _w in sink.arrivals) == sorted(f"dlv_a_{i}" for i in range(n))
    # ... and together no faster than the rate allows: over the whole run and over
    # any coarse window. Admitted by Postgres's clock, timed here at arrival: on a loaded
    # machine one request may take a few hundred milliseconds longer than another to
    # arrive (CI once saw the span 0.11 s short of rate * N + burst), so the bounds allow
    # that much on top. Two replicas each at the rate would send the 45 in about 2 s.
    assert n <= per_second * (span + ARRIVAL_JITTER) + burst + 1
    for window in (1.0, 2.0):
        assert _most_in_any_window(times, window) <= (
            math.ceil(per_second * (window + ARRIVAL_JITTER)) + burst + 1
        )
    waits = await rt.pool.fetchval("SELECT count(*) FROM delivery_schedule")
    assert waits == 0


async def test_a_tenant_rate_counts_every_endpoint_of_the_tenant(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    n = 30
    settings = dispatcher_config(max_in_flight=8, tenants={"a": TenantLimits(rate="10/s", burst=2)})
    await rt.outbox.commit_and_publish([request("a", i, url=sink.url) for i in range(n)])
    await rt.outbox.commit_and_publish([request("b", i, url=sink.url) for i in range(5)])
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(Loop(rt, client, settings, max_in_flight=8))
        await until(lambda: len(sink.arrivals) >= n + 5, timeout=120)
    a_times = [t for _d, tenant, t in sink.arrivals if tenant == "a"]
    # Admitted by Postgres's clock, timed here at arrival (ARRIVAL_JITTER): two loops each
    # sending at the rate would send the 30 in about 1.3 s, and put 40 in any 2 s.
    span = max(a_times) - min(a_times)
    assert n <= 10 * (span + ARRIVAL_JITTER) + 2 + 1
    assert _most_in_any_window(a_times, 2.0) <= math.ceil(10 * (2.0 + ARRIVAL_JITTER)) + 2 + 1


async def test_max_in_flight_holds_across_two_replicas(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    hold = threading.Event()
    with Sink(hold) as slow:
        endpoints = {"slow": held_endpoint(slow, cap=3)}
        # A small read-ahead, so that both loops take some of the twelve.
        settings = dispatcher_config(max_in_flight=8, read_ahead=3, endpoints=endpoints)
        before = _waits("in_flight")
        await rt.outbox.commit_and_publish([request("a", i, endpoint="slow") for i in range(12)])
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(Loop(rt, client, settings, max_in_flight=8))
            await until(lambda: len(slow.arrivals) >= 3)
            # Each loop alone would send three; together they hold three places, and
            # the rest wait on the schedule (holding no slot), again and again.
            await until(lambda: _waits("in_flight") >= before + 4)
            assert len(slow.arrivals) == 3
            hold.set()
            await until(lambda: len(slow.arrivals) >= 12, timeout=120)
        assert slow.most_open <= 3
        assert sorted(d for d, _t, _w in slow.arrivals) == sorted(f"dlv_a_{i}" for i in range(12))
