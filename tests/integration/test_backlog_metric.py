"""The delivery backlog metric (hookbus_delivery_backlog{tenant, endpoint}) is read from
Postgres: deliveries not yet ended, by tenant and destination (endpoint, notification
channel, a URL's host), the same from any process and after a restart. Real Postgres and
NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Gauge

from hookbus_common import events as ev
from hookbus_common.service import Runtime, runtime
from hookbus_common.settings import Settings
from hookbus_dispatcher import backlog
from hookbus_dispatcher.fairness_loop import route

pytestmark = pytest.mark.integration


def _request(
    n: int, tenant: str, *, url: str = "", endpoint: str | None = None, channel: str | None = None
) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_{n}", rule="r", webhook_id=f"w{n}", url=url, endpoint=endpoint,
            notification=channel, body=msgspec.Raw(b"{}"), tenant=tenant,
        ),
        source="/test",
        tenant=tenant,
    )  # fmt: skip


def _outcome(kind: type[ev.DeliveryOutcome], n: int, tenant: str) -> ev.Event[Any]:
    return ev.make_event(kind(delivery_id=f"dlv_{n}", url="", tenant=tenant), source="/test")


def _gauge() -> Gauge:
    return Gauge("b", "b", ["tenant", "endpoint"], registry=CollectorRegistry())


def _values(g: Gauge) -> dict[tuple[str, str], float]:
    return {
        (s.labels["tenant"], s.labels["endpoint"]): s.value for m in g.collect() for s in m.samples
    }


async def test_the_backlog_counts_open_deliveries_by_tenant_and_destination(
    rt: Runtime, settings: Settings
) -> None:
    reqs = [
        _request(1, "acme", endpoint="billing"),
        _request(2, "acme", endpoint="billing"),
        _request(3, "acme", endpoint="billing"),  # retrying: still open
        _request(4, "acme", endpoint="billing"),  # succeeded: not counted
        _request(5, "acme", channel="ops"),
        _request(6, "beta", url="https://user:pw@Hooks.Example.com:8443/in?x=1"),
        _request(7, "beta", endpoint="billing"),  # dead: not counted
    ]
    await rt.outbox.commit(reqs)
    await rt.outbox.commit(
        [
            _outcome(ev.DeliveryAttempted, 3, "acme"),
            _outcome(ev.DeliverySucceeded, 4, "acme"),
            _outcome(ev.DeliveryDead, 7, "beta"),
        ]
    )
    expected = {
        ("acme", "billing"): 3,
        ("acme", "notification:ops"): 1,
        ("beta", "url:hooks.example.com:8443"): 1,
    }
    assert await backlog.read(rt.pool) == expected
    # The fair scheduler's names for the same deliveries.
    for req in (reqs[0], reqs[4], reqs[5]):
        msg = type("M", (), {"data": ev.encode(req)})()
        assert route(msg) in expected  # type: ignore[arg-type]

    # Another process (a replica, or this one restarted) reads the same.
    async with runtime(settings, "other") as other:
        assert await backlog.read(other.pool) == expected


async def test_the_gauge_follows_the_backlog_and_drops_to_zero(rt: Runtime) -> None:
    await rt.outbox.commit([_request(1, "acme", endpoint="billing")])
    gauge = _gauge()
    reporter = backlog.Reporter(gauge)
    stop = asyncio.Event()
    task = asyncio.create_task(reporter.run(rt.pool, stop, every=0.05))
    try:
        async with asyncio.timeout(10):
            while _values(gauge).get(("acme", "billing")) != 1:
                await asyncio.sleep(0.05)
        await rt.outbox.commit([_outcome(ev.DeliverySucceeded, 1, "acme")])
        async with asyncio.timeout(10):
            while _values(gauge).get(("acme", "billing")) != 0:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
