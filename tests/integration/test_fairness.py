"""Fair sending through the dispatcher's own consume loop, on real NATS and Postgres, to
HTTP sinks on loopback: a tenant's flood does not put another tenant's deliveries behind
it, and a slow endpoint holds at most its cap of the sending slots. Bounds are orders and
counts, never wall-clock times."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.consumer import Handler
from hookbus_common.service import Runtime
from hookbus_dispatcher import retryafter
from hookbus_dispatcher.config import DispatcherConfig, DispatcherSettings, Endpoint
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.fairness_loop import FairConsumer, consumer_for
from hookbus_dispatcher.limits_guard import guard
from hookbus_dispatcher.ordering import in_order
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .dispatching import dispatcher_consumer

pytestmark = pytest.mark.integration

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Sink:
    """An HTTP server on 127.0.0.1 (its own thread) that answers 200 and keeps, for every
    request, its delivery id, tenant header, arrival time and how many were open at
    once. ``hold`` (a threading.Event) makes it answer only once set."""

    def __init__(
        self,
        hold: threading.Event | None = None,
        answer: Callable[[str], int] = lambda _delivery: 200,
    ) -> None:
        self.arrivals: list[tuple[str, str, float]] = []  # (delivery id, tenant, when)
        self.answers: list[tuple[str, int]] = []  # (delivery id, status) in order
        self.open = 0
        self.most_open = 0
        self.hold = hold
        lock = threading.Lock()
        sink = self

        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    sink.open += 1
                    sink.most_open = max(sink.most_open, sink.open)
                    sink.arrivals.append(
                        (
                            self.headers.get("x-hookbus-delivery", ""),
                            self.headers.get("x-tenant", ""),
                            time.monotonic(),
                        )
                    )
                if sink.hold is not None:
                    sink.hold.wait(30)
                delivery = self.headers.get("x-hookbus-delivery", "")
                with lock:
                    sink.open -= 1
                    status = answer(delivery)
                    sink.answers.append((delivery, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def held_endpoint(sink: Sink, *, cap: int) -> Endpoint:
    """Tenant a's endpoint at ``sink`` (which may hold its answers), at most ``cap`` in
    flight, with a timeout no held request reaches."""
    return Endpoint(url=sink.url, tenant="a", allow_private=True, max_in_flight=cap, timeout=120)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with guarded_client(allow_networks=LOOPBACK, timeout=30.0) as c:
        yield c


def request(
    tenant: str,
    n: int | str,
    *,
    url: str = "",
    endpoint: str | None = None,
    ordering_key: str | None = None,
) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_{tenant}_{n}", rule="r", webhook_id=f"evt_{tenant}_{n}", url=url,
            headers={"x-tenant": tenant}, body=msgspec.Raw(b"{}"), tenant=tenant,
            endpoint=endpoint, ordering_key=ordering_key,
        ),
        source="/test",
    )  # fmt: skip


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Loop:
    """The dispatcher's consume loop as its main() builds it: the fair read-ahead, the
    limits in front of the handler, and the schedule beside it."""

    def __init__(
        self,
        rt: Runtime,
        client: httpx.AsyncClient,
        settings: DispatcherConfig,
        *,
        max_in_flight: int = 4,
        ack_wait: float = 30.0,
        drain_timeout: float | None = None,
    ) -> None:
        self.rt = rt
        self.stop = asyncio.Event()
        self.scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow, idle_interval=0.5)
        inner = make_handler(
            client, rt.pool, 5, endpoints=settings.endpoints, scheduler=self.scheduler
        )
        limited = guard(
            inner,
            rt.pool,
            endpoints=settings.endpoints,
            tenants=settings.dispatcher.tenants,
            wake=self.scheduler.wake,
        )
        handler: Handler = in_order(limited, rt.pool, wake=self.scheduler.wake)
        make = consumer_for(settings)
        self.consumer = dispatcher_consumer(
            rt, handler, max_attempts=5, max_in_flight=max_in_flight, make=make,
            ack_wait=ack_wait, drain_timeout=drain_timeout,
        )  # fmt: skip
        assert isinstance(self.consumer, FairConsumer)
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Loop:
        self.tasks.append(asyncio.create_task(self.consumer.run(self.stop)))
        self.tasks.append(asyncio.create_task(self.scheduler.run(self.stop)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 40)


def dispatcher_config(**kw: Any) -> DispatcherConfig:
    endpoints = kw.pop("endpoints", {})
    return DispatcherConfig(dispatcher=DispatcherSettings(**kw), endpoints=endpoints)


async def test_a_flood_of_one_tenant_does_not_put_another_tenant_behind_it(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # Tenant a's 300 deliveries are in the stream before tenant b's 10: a plain loop would
    # send all of a's first. The fair loop reads ahead and sends b's in turn with a's.
    flood = [request("a", i, url=sink.url) for i in range(300)]
    quiet = [request("b", i, url=sink.url) for i in range(10)]
    await rt.outbox.commit_and_publish(flood)
    await rt.outbox.commit_and_publish(quiet)
    async with Loop(rt, client, dispatcher_config(max_in_flight=4)) as loop:
        await until(lambda: len(sink.arrivals) >= 310)
        # Read ahead on one standing pull: a few pull requests for all 310, not one a batch.
        puller = loop.consumer._puller
        assert puller is not None
        assert puller.requests <= 3, puller.requests
    order = [tenant for _id, tenant, _t in sink.arrivals]
    last_b = max(i for i, t in enumerate(order) if t == "b")
    # Every one of b's went out while most of a's flood was still waiting.
    assert last_b < 100, order[:120]
    assert sorted(d for d, _t, _w in sink.arrivals) == sorted(
        r.data.delivery_id for r in flood + quiet
    )


@pytest.mark.parametrize("held", [1, 30])
async def test_what_is_held_past_ack_wait_is_not_sent_again(
    rt: Runtime, client: httpx.AsyncClient, held: int
) -> None:
    # An endpoint held with a cap of one and a timeout longer than ``ack_wait``: one
    # delivery in flight, the rest waiting in the read-ahead, for more than twice
    # ``ack_wait``. The loop tells NATS each of them is in progress before its ack_wait
    # runs out, so none is delivered again, and once the endpoint answers each arrives
    # once.
    hold = threading.Event()
    with Sink(hold) as slow:
        endpoints = {"slow": held_endpoint(slow, cap=1)}
        settings = dispatcher_config(max_in_flight=4, endpoints=endpoints)
        reqs = [request("a", i, endpoint="slow") for i in range(held)]
        await rt.outbox.commit_and_publish(reqs)
        loop = Loop(rt, client, settings, ack_wait=3.0)
        assert isinstance(loop.consumer, FairConsumer)
        async with loop:
            await until(lambda: len(slow.arrivals) == 1 and len(loop.consumer.queue) == held - 1)
            await asyncio.sleep(8)  # past two of its ack_waits
            info = await rt.bus.js.consumer_info(rt.bus.stream, loop.consumer.durable)
            assert info.num_redelivered == 0, info
            assert info.num_ack_pending == held, info
            assert len(slow.arrivals) == 1
            hold.set()
            await until(lambda: len(slow.arrivals) >= held)
            await asyncio.sleep(0.5)
    arrived = [d for d, _t, _w in slow.arrivals]
    assert sorted(arrived) == sorted(r.data.delivery_id for r in reqs)  # each once


async def test_a_delivery_being_sent_at_a_stop_is_not_sent_again_while_it_drains(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    # Replica a is sending a delivery to a held URL when it is stopped; its drain
    # waits for the attempt longer than ``ack_wait``. Replica b, started once a has the
    # delivery, waits for work on the same durable. a keeps telling NATS the delivery is
    # in progress while it drains, so b is never handed it, and it arrives once.
    hold = threading.Event()
    with Sink(hold) as slow:
        # A URL, not an endpoint: an endpoint's max_in_flight would hold b's copy back
        # on its own (it counts across replicas).
        settings = dispatcher_config(max_in_flight=4, timeout_seconds=60)
        req = request("a", 0, url=slow.url)
        await rt.outbox.commit_and_publish([req])
        a = Loop(rt, client, settings, ack_wait=3.0, drain_timeout=15.0)
        async with a:
            await until(lambda: len(slow.arrivals) == 1)
            async with Loop(rt, client, settings, ack_wait=3.0) as b:
                await asyncio.sleep(2.0)  # told in progress once: the stop comes after
                a.stop.set()
                await asyncio.sleep(8)  # past two of its ack_waits, a still draining
                info = await rt.bus.js.consumer_info(rt.bus.stream, b.consumer.durable)
                assert info.num_redelivered == 0, info
                assert len(slow.arrivals) == 1
                hold.set()
                await until(lambda: len(slow.answers) >= 1)
                await asyncio.sleep(0.5)
    assert [d for d, _t, _w in slow.arrivals] == [req.data.delivery_id]


async def test_a_slow_endpoint_holds_only_its_cap_of_the_slots(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # "slow" does not answer until released (as one answering in 10 s); with a cap of 2 it
    # holds two of the eight slots, and every delivery to "fast" goes through meanwhile.
    hold = threading.Event()
    with Sink(hold) as slow:
        endpoints = {
            "slow": Endpoint(url=slow.url, tenant="a", allow_private=True, max_in_flight=2),
            "fast": Endpoint(url=sink.url, tenant="a", allow_private=True),
        }
        settings = dispatcher_config(max_in_flight=8, endpoints=endpoints)
        await rt.outbox.commit_and_publish([request("a", i, endpoint="slow") for i in range(20)])
        await rt.outbox.commit_and_publish(
            [request("a", 100 + i, endpoint="fast") for i in range(40)]
        )
        async with Loop(rt, client, settings, max_in_flight=8):
            await until(lambda: len(sink.arrivals) >= 40)
            assert len(slow.arrivals) == 2
            assert slow.most_open == 2
            hold.set()
            await until(lambda: len(slow.arrivals) >= 20)
        assert slow.most_open <= 2


async def test_a_full_read_ahead_spills_the_destination_that_fills_it(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # A read-ahead of 10 filled by a held endpoint's 30 deliveries would read nothing
    # more; the destination holding most of it has its newest moved to the schedule
    # (acked), so the deliveries behind them in the stream are read and sent.
    hold = threading.Event()
    with Sink(hold) as slow:
        endpoints = {
            "slow": held_endpoint(slow, cap=1),
            "fast": Endpoint(url=sink.url, tenant="b", allow_private=True),
        }
        settings = dispatcher_config(max_in_flight=4, read_ahead=10, endpoints=endpoints)
        await rt.outbox.commit_and_publish([request("a", i, endpoint="slow") for i in range(30)])
        await rt.outbox.commit_and_publish([request("b", i, endpoint="fast") for i in range(5)])
        async with Loop(rt, client, settings):
            await until(lambda: len(sink.arrivals) >= 5)
            assert len(slow.arrivals) == 1
            waiting = await rt.pool.fetchval("SELECT count(*) FROM delivery_schedule WHERE waited")
            assert waiting >= 20
            hold.set()


async def test_a_full_read_ahead_with_nothing_behind_it_spills_nothing(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    # A held endpoint's 21 deliveries: one in flight, 20 filling the read-ahead, and
    # nothing left in the stream behind them. Moving some to the schedule would let the
    # loop read nothing more, at two writes and a second read each: they stay.
    hold = threading.Event()
    with Sink(hold) as slow:
        settings = dispatcher_config(max_in_flight=4, read_ahead=20)
        reqs = [request("a", i, url=slow.url) for i in range(21)]
        await rt.outbox.commit_and_publish(reqs)
        spilled = REGISTRY.get_sample_value("hookbus_dispatcher_spilled_total") or 0.0
        loop = Loop(rt, client, settings)
        assert isinstance(loop.consumer, FairConsumer)
        async with loop:
            await until(lambda: len(loop.consumer.queue) == 20)
            await asyncio.sleep(1.5)  # the loop looks at what is behind once a second
            assert loop.consumer.behind == 0
            assert REGISTRY.get_sample_value("hookbus_dispatcher_spilled_total") == spilled
            hold.set()
            await until(lambda: len(slow.arrivals) >= 21)
    assert sorted(d for d, _t, _w in slow.arrivals) == sorted(r.data.delivery_id for r in reqs)


def given_back() -> float:
    return REGISTRY.get_sample_value("hookbus_dispatcher_given_back_total") or 0.0


HeldBacklog = tuple[Sink, list[ev.Event[ev.DeliveryRequested]], threading.Event]


@pytest.fixture
async def held_backlog(rt: Runtime) -> AsyncIterator[HeldBacklog]:
    """300 deliveries of one tenant in the stream, to a sink that answers none of them
    until its ``hold`` is set."""
    hold = threading.Event()
    with Sink(hold) as slow:
        reqs = [request("a", i, url=slow.url) for i in range(300)]
        await rt.outbox.commit_and_publish(reqs)
        yield slow, reqs, hold


async def test_a_replica_gives_its_surplus_to_one_holding_less(
    rt: Runtime, client: httpx.AsyncClient, held_backlog: HeldBacklog
) -> None:
    # The first replica reads the whole backlog ahead while its endpoint is held; a second
    # replica starts with nothing to pull. The first says what it holds, the second that
    # it waits, and the first gives back what it holds beyond its part; the second sends
    # those. Each delivery once.
    slow, reqs, hold = held_backlog
    settings = dispatcher_config(max_in_flight=4)
    given = given_back()
    first = Loop(rt, client, settings)
    async with first:
        await until(lambda: len(first.consumer.queue) >= 290)
        second = Loop(rt, client, settings)
        async with second:
            # What the first gives back goes to whichever pull request waits, its own
            # included, so the share grows over a few words (one a second).
            await until(lambda: len(second.consumer.queue) >= 100)
            assert given_back() - given >= 100
            assert len(first.consumer.queue) <= 200
            hold.set()
            await until(lambda: len({d for d, _t, _w in slow.arrivals}) >= 300)
    arrived = [d for d, _t, _w in slow.arrivals]
    assert sorted(arrived) == sorted(r.data.delivery_id for r in reqs)  # each once


async def test_a_lone_replica_keeps_what_it_read_ahead(
    rt: Runtime, client: httpx.AsyncClient, held_backlog: HeldBacklog
) -> None:
    # With no other replica to hear, a replica holding a backlog it cannot send yet gives
    # nothing back and keeps reading ahead as far as it may.
    slow, reqs, hold = held_backlog
    given = given_back()
    loop = Loop(rt, client, dispatcher_config(max_in_flight=4))
    async with loop:
        await until(lambda: len(loop.consumer.queue) == 299)  # one in flight: its cap
        await asyncio.sleep(2.5)  # two of its words, once a second
        assert len(loop.consumer.queue) == 299
        assert given_back() == given
        assert loop.consumer._limit() == loop.consumer.buffer
        hold.set()
        await until(lambda: len(slow.arrivals) >= 300)
    assert sorted(d for d, _t, _w in slow.arrivals) == sorted(r.data.delivery_id for r in reqs)


async def test_a_read_ahead_held_short_while_sharing_spills_nothing(
    rt: Runtime, client: httpx.AsyncClient, held_backlog: HeldBacklog
) -> None:
    # A replica that gave work back reads ahead only its part for a while; with more in
    # the stream behind, it reads nothing more, and moves nothing to the schedule (where a
    # delivery would wait 15-45 s: three rate-limited replicas sent 58 % of their limit).
    slow, reqs, hold = held_backlog
    spilled = REGISTRY.get_sample_value("hookbus_dispatcher_spilled_total") or 0.0
    loop = Loop(rt, client, dispatcher_config(max_in_flight=4))
    loop.consumer._share = 50
    loop.consumer._shared_until = float("inf")
    async with loop:
        await until(lambda: len(loop.consumer.queue) >= 40)
        await asyncio.sleep(1.5)  # a spill would look at what is behind once a second
        assert len(loop.consumer.queue) <= 50  # so 249 or more wait in the stream
        assert REGISTRY.get_sample_value("hookbus_dispatcher_spilled_total") == spilled
        loop.consumer._shared_until = float("-inf")  # the hold is over: it reads on
        hold.set()
        await until(lambda: len(slow.arrivals) >= 300)
    assert sorted(d for d, _t, _w in slow.arrivals) == sorted(r.data.delivery_id for r in reqs)
