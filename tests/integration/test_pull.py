"""The standing pull against a real nats-server: one request serves many messages, what was
asked for is tracked through the server's status messages, and a forgotten or expired
request is asked again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from hookbus_common.pull import StandingPull

from ..conftest import Servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def durable(servers: Servers) -> AsyncIterator[tuple[Client, JetStreamContext, str]]:
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    name = f"PULL_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    try:
        yield nc, js, name
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _bound(js: JetStreamContext, stream: str) -> JetStreamContext.PullSubscription:
    return await js.pull_subscribe_bind(durable="d", stream=stream)


async def _take_n(puller: StandingPull, n: int, free: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(30):
        while len(got) < n:
            await puller.ask(free)
            for msg in await puller.take():
                got.append(msg.data)
                await msg.ack()
    return got


async def test_messages_trickling_in_come_on_few_requests(
    durable: tuple[Client, JetStreamContext, str],
) -> None:
    nc, js, stream = durable
    puller = StandingPull(nc, await _bound(js, stream), size=64, expires=30)
    await puller.start()

    async def trickle() -> None:
        for i in range(40):
            await js.publish(f"{stream}.x", str(i).encode())
            await asyncio.sleep(0.005)

    sender = asyncio.create_task(trickle())
    got = await _take_n(puller, 40, free=64)
    await sender
    await puller.close()

    assert got == [str(i).encode() for i in range(40)]
    # fetch() sends one request per message here; the standing pull tops up at half.
    assert puller.requests <= 3, puller.requests


async def test_never_more_messages_than_free_slots_are_asked_for(
    durable: tuple[Client, JetStreamContext, str],
) -> None:
    nc, js, stream = durable
    for i in range(20):
        await js.publish(f"{stream}.x", str(i).encode())
    puller = StandingPull(nc, await _bound(js, stream), size=64, expires=30)
    await puller.start()
    await puller.ask(5)
    await asyncio.sleep(0.5)  # give the server every chance to send more than asked
    came = await puller.take()
    await puller.close()
    assert [m.data for m in came] == [str(i).encode() for i in range(5)]
    assert puller.asked == 0


async def test_an_expired_request_is_accounted_and_asked_again(
    durable: tuple[Client, JetStreamContext, str],
) -> None:
    nc, js, stream = durable
    puller = StandingPull(nc, await _bound(js, stream), size=8, expires=0.3)
    await puller.start()
    await puller.ask(8)
    assert puller.asked == 8
    # Nothing to send: the server ends the request with a 408 naming 8 undelivered.
    assert await puller.take() == []
    assert puller.asked == 0

    await js.publish(f"{stream}.x", b"late")
    got = await _take_n(puller, 1, free=8)
    await puller.close()
    assert got == [b"late"]
    assert puller.requests == 2


async def test_a_forgotten_request_is_asked_again(
    durable: tuple[Client, JetStreamContext, str],
) -> None:
    nc, js, stream = durable
    puller = StandingPull(nc, await _bound(js, stream), size=8, expires=30)
    await puller.start()
    await puller.ask(8)
    puller.forget()  # as after a reconnect
    assert await puller.take() == []
    await js.publish(f"{stream}.x", b"after")
    got = await _take_n(puller, 1, free=8)
    await puller.close()
    assert got == [b"after"]
    assert puller.requests == 2
