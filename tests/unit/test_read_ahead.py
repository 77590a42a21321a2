"""The fair read-ahead's own pacing: a flood read together is put in the read-ahead, and
later told in progress, in chunks with turns of the event loop between them, so the
deliveries in flight are not held back behind thousands of messages at once; and a
message is told in progress only once it has waited half of ``ack_wait``."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_dispatcher import fairness_loop
from hookbus_dispatcher.fairness_loop import FairConsumer, _Held


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeMsg:
    """What the read-ahead uses of a message: its data, and being told in progress."""

    def __init__(self, tenant: str, n: int) -> None:
        event = ev.make_event(
            ev.DeliveryRequested(
                delivery_id=f"dlv_{tenant}_{n}", rule="r", webhook_id=f"evt_{n}",
                url=f"https://{tenant}.example/hook", body=msgspec.Raw(b"{}"), tenant=tenant,
            ),
            source="/test",
        )  # fmt: skip
        self.data = msgspec.json.encode(event)
        self.told = 0

    async def in_progress(self) -> None:
        self.told += 1


class FakePuller:
    """Hands out one batch, then nothing until the test ends."""

    def __init__(self, batch: list[FakeMsg], stop: asyncio.Event) -> None:
        self.batch = batch
        self.stop = stop

    async def ask(self, free: int) -> None:
        pass

    async def take(self) -> list[FakeMsg]:
        if self.batch:
            batch, self.batch = self.batch, []
            return batch
        await self.stop.wait()
        return []


def consumer(clock: Clock, *, ack_wait: float = 30.0) -> FairConsumer:
    return FairConsumer(
        buffer=10_000, cap_for=lambda _d: 0, service="dispatcher", bus=None, outbox=None,
        durable="hb-dispatcher", filter_subjects=["hb.>"], handler=None, max_in_flight=4,
        max_deliver=3, clock=clock, share=False, ack_wait=ack_wait,
    )  # fmt: skip


async def watch(c: FairConsumer, seen: list[int], stop: asyncio.Event, what: Any) -> None:
    """A delivery in flight, as it were: notes ``what()`` at each turn it gets."""
    while not stop.is_set():
        seen.append(what())
        await asyncio.sleep(0)


async def test_a_flood_read_at_once_goes_into_the_read_ahead_a_chunk_a_turn() -> None:
    clock = Clock()
    c = consumer(clock)  # a cap of 0: nothing is started, all of it waits
    flood = [FakeMsg("flood", i) for i in range(1000)]
    stop = asyncio.Event()
    seen: list[int] = []
    watcher = asyncio.create_task(watch(c, seen, stop, lambda: len(c.queue)))
    reader = asyncio.create_task(c._read_ahead(FakePuller(flood, stop), stop))  # type: ignore[arg-type]
    for _ in range(200):
        await asyncio.sleep(0)
        if len(c.queue) == len(flood):
            break
    stop.set()
    await asyncio.gather(watcher, reader)
    assert len(c.queue) == len(flood)
    # The other task ran while the flood went in, and saw it part-way, a chunk at a time.
    partial = sorted({n for n in seen if 0 < n < len(flood)})
    assert partial, seen
    assert all(n % fairness_loop.READ_CHUNK == 0 for n in partial), partial
    assert len(partial) >= len(flood) // fairness_loop.READ_CHUNK - 1


async def test_only_what_waited_half_of_ack_wait_is_told_in_progress_in_chunks() -> None:
    clock = Clock()
    c = consumer(clock, ack_wait=30.0)
    old = [FakeMsg("a", i) for i in range(200)]
    new = [FakeMsg("b", i) for i in range(50)]
    for m in old:
        c.queue.put("a", "url:a.example", _Held(m, 100.0))  # type: ignore[arg-type]
    for m in new:
        c.queue.put("b", "url:b.example", _Held(m, 110.0))  # type: ignore[arg-type]
    clock.now = 116.0  # the old ones waited 16 s, the new ones 6 s
    stop = asyncio.Event()
    seen: list[int] = []
    watcher = asyncio.create_task(watch(c, seen, stop, lambda: sum(m.told for m in old)))
    told = await c._heartbeat(clock(), 15.0)
    stop.set()
    await watcher
    assert told == len(old)
    assert all(m.told == 1 for m in old)
    assert all(m.told == 0 for m in new)
    # The other task ran between the chunks: it saw them told part-way.
    partial = sorted({n for n in seen if 0 < n < len(old)})
    assert partial, seen
    assert all(n % fairness_loop.HEARTBEAT_CHUNK == 0 for n in partial), partial

    # Told a moment ago, they are not told again until they have waited as long again.
    assert await c._heartbeat(clock(), 15.0) == 0
    clock.now = 131.0
    assert await c._heartbeat(clock(), 15.0) == len(old) + len(new)


async def test_the_feeder_tells_a_waiting_message_once_half_of_ack_wait_has_passed() -> None:
    clock = Clock()
    c = consumer(clock, ack_wait=0.6)  # told at 0.3 s waited, looked for every 0.1 s
    msg = FakeMsg("a", 1)
    c.queue.put("a", "url:a.example", _Held(msg, clock()))  # type: ignore[arg-type]
    stop = asyncio.Event()
    feeder = asyncio.create_task(c._feed(stop))
    clock.now += 0.2
    await asyncio.sleep(0.25)  # looked for at least twice: not yet half of ack_wait
    assert msg.told == 0
    clock.now += 0.2
    for _ in range(250):
        await asyncio.sleep(0.02)
        if msg.told:
            break
    stop.set()
    c._changed.set()
    await asyncio.wait_for(feeder, 5)
    assert msg.told == 1
