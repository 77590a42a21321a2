"""The consumer-lag gauges against real NATS: while a consume loop runs it reports its
durable's backlog (messages not yet delivered, and delivered but not acked)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from hookbus_common.consumer import Incoming, Yielded
from hookbus_common.service import Runtime

from .test_consumer import Running, _job, until

pytestmark = pytest.mark.integration


def _gauge(name: str, durable: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"consumer": durable})


async def test_a_running_consumer_reports_its_backlog(rt: Runtime) -> None:
    release = asyncio.Event()

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        await release.wait()
        return
        yield

    await rt.outbox.commit_and_publish([_job(n) for n in range(5)])
    durable = f"{rt.bus.prefix}-test"
    async with Running(rt, handler, max_in_flight=1) as running:
        running.consumer.lag_interval = 0.05

        async def held() -> bool:
            return (
                _gauge("hookbus_consumer_pending", durable),
                _gauge("hookbus_consumer_ack_pending", durable),
            ) == (4.0, 1.0)

        await until(held)  # one in hand, four waiting
        release.set()

        async def drained() -> bool:
            return (
                _gauge("hookbus_consumer_pending", durable),
                _gauge("hookbus_consumer_ack_pending", durable),
            ) == (0.0, 0.0)

        await until(drained)
