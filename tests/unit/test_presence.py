"""Dispatcher replicas' presence: who holds a backlog and who waits for work, heard on a
core NATS subject (a fake client here; the integration tests use real NATS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_dispatcher import presence
from hookbus_dispatcher.presence import Presence, Word


class FakeNats:
    """Every subscriber of a subject hears every publish on it, the speaker included (as
    on NATS)."""

    def __init__(self) -> None:
        self.subs: dict[str, list[Callable[[Any], Awaitable[None]]]] = {}
        self.said: list[Word] = []

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> Any:
        self.subs.setdefault(subject, []).append(cb)
        return self

    async def unsubscribe(self) -> None:
        pass

    async def publish(self, subject: str, data: bytes) -> None:
        self.said.append(msgspec.json.decode(data, type=Word))
        for cb in list(self.subs.get(subject, [])):
            await cb(_Msg(data))


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replica(nc: FakeNats, clock: Clock, me: str, holds: int, *, min_gap: int = 8) -> Presence:
    def wants(theirs: int) -> int | None:
        return holds if holds + min_gap < theirs else None

    return Presence(nc, "hb", wants_work=wants, clock=clock, me=me)  # type: ignore[arg-type]


async def pair(a_holds: int, b_holds: int) -> tuple[FakeNats, Clock, Presence, Presence]:
    """Replicas a and b on one (fake) NATS, listening."""
    nc, clock = FakeNats(), Clock()
    a, b = replica(nc, clock, "a", a_holds), replica(nc, clock, "b", b_holds)
    await a.start()
    await b.start()
    return nc, clock, a, b


async def test_a_replica_holding_less_answers_a_holder_with_what_it_holds() -> None:
    nc, _clock, a, b = await pair(500, 3)
    await a.hold(500)
    assert nc.said == [Word("a", held=500), Word("b", held=3, waiting=True)]
    assert a.waiting_peers() == [3]
    assert b.waiting_peers() == []  # a holder's word is not a wait
    a.answered()
    assert a.waiting_peers() == []


async def test_a_replica_holding_as_much_stays_silent() -> None:
    nc, _clock, a, _b = await pair(500, 495)
    await a.hold(500)
    assert nc.said == [Word("a", held=500)]
    assert a.waiting_peers() == []


async def test_a_lone_replica_hears_only_itself_and_nobody_waits() -> None:
    nc, clock = FakeNats(), Clock()
    a = replica(nc, clock, "a", 0)
    await a.start()
    for _ in range(5):
        await a.hold(10_000)
        clock.now += presence.EVERY
    assert a.waiting_peers() == []
    assert all(not w.waiting for w in nc.said)


async def test_a_wait_counts_for_a_while_and_is_answered_at_most_twice_a_second() -> None:
    nc, clock, a, _b = await pair(500, 0)
    await a.hold(500)
    await a.hold(500)  # at once again: b said it waits a moment ago
    assert [w.id for w in nc.said] == ["a", "b", "a"]
    clock.now += presence.HEARD_FOR + 0.1
    assert a.waiting_peers() == []  # b said nothing since: stopped, or busy
    await a.hold(500)
    assert a.waiting_peers() == [0]


async def test_words_that_are_not_presence_are_ignored() -> None:
    nc, clock = FakeNats(), Clock()
    a = replica(nc, clock, "a", 500)
    await a.start()
    for cb in nc.subs[ev.presence_subject("hb")]:
        await cb(_Msg(b"not json"))
        await cb(_Msg(b'{"held": "many"}'))
    assert a.waiting_peers() == []


def test_the_subject_is_outside_the_stream() -> None:
    assert not ev.presence_subject("hb").startswith("hb.")


class _Held:
    def __init__(self) -> None:
        self.msg = None


async def test_a_replica_holding_little_sleeps_until_its_read_ahead_deepens(
    monkeypatch: Any,
) -> None:
    """The sharing loop looks once a second only while there is something to share: an
    idle dispatcher is not woken for it."""
    import asyncio

    from hookbus_dispatcher.fairness_loop import FairConsumer

    monkeypatch.setattr(presence, "EVERY", 0.01)
    nc, clock = FakeNats(), Clock()
    c = FairConsumer(
        buffer=1000, cap_for=lambda _d: 8, service="dispatcher", bus=None, outbox=None,
        durable="hb-dispatcher", filter_subjects=["hb.>"], handler=None, max_in_flight=4,
        max_deliver=3, clock=clock,
    )  # fmt: skip
    c.presence = replica(nc, clock, "a", 0)
    looks = 0
    waiting_peers = c.presence.waiting_peers

    def counted() -> list[int]:
        nonlocal looks
        looks += 1
        return waiting_peers()

    monkeypatch.setattr(c.presence, "waiting_peers", counted)
    stop = asyncio.Event()
    sharing = asyncio.create_task(c._share_out(stop))
    for _ in range(3):
        c.queue.put("t", "d", _Held())  # type: ignore[arg-type]
    await asyncio.sleep(0.2)  # twenty turns of the sharing loop, were it awake
    assert looks <= 2
    assert nc.said == []

    for _ in range(c._deep_at()):  # a deep read-ahead, as the reader leaves it
        c.queue.put("t", "d", _Held())  # type: ignore[arg-type]
    c._deep.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if nc.said:
            break
    assert nc.said
    assert nc.said[0].held == len(c.queue)  # it speaks of what it holds
    stop.set()
    sharing.cancel()
    await asyncio.gather(sharing, return_exceptions=True)
