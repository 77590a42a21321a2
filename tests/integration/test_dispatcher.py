"""The dispatcher against a real HTTP sink on loopback, real Postgres and real NATS: what
each answer of the receiving end records, when it asks for another attempt, how long it
waits, and how attempts are numbered when messages come back without one being made."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings
from hookbus_dispatcher import retryafter, schedule
from hookbus_dispatcher.delivery import USER_AGENT, attempt, make_handler
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .dispatching import dispatcher_consumer, durable, subject
from .ownpostgres import OwnPostgres, runtime_on, serving, waiting_for_recovery

pytestmark = pytest.mark.integration

BODY = b'{"ref": "refs/heads/main", "n": 1}'

# ------------------------------------------------------------------------------ sink


class Received(msgspec.Struct, frozen=True):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Sink:
    """An HTTP server on 127.0.0.1 (stdlib, its own thread) that answers from a script
    (the last answer repeats) and keeps every request it was sent."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = [(200, {})]
        self.reply_body = b""
        self.received: list[Received] = []
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with lock:
                    sink.received.append(
                        Received(
                            method=self.command,
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                        )
                    )
                    status, headers = sink.script[0]
                    if len(sink.script) > 1:
                        sink.script.pop(0)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(sink.reply_body)))
                self.end_headers()
                self.wfile.write(sink.reply_body)

            do_POST = do_PUT = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def answer(self, *script: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these statuses (and headers), in order."""
        self.script = [s if isinstance(s, tuple) else (s, {}) for s in script]


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A loopback URL that refuses connections: the port is held (bound, never listening),
    so nothing else can take it while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # Built as the dispatcher's main() builds it, with loopback allowed (the sinks' home).
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as c:
        yield c


# --------------------------------------------------------------------------- helpers


def _request(url: str, delivery_id: str = "dlv_t") -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="notify", webhook_id="evt_w", url=url,
            headers={"content-type": "application/json", "x-team": "ops"},
            body=msgspec.Raw(BODY), tenant="acme",
        ),
        source="/test",
    )  # fmt: skip


class _NoMsg:
    async def in_progress(self) -> None:
        return None


LATER = timedelta(days=3)
"""Past any wait of the default schedule: a handler whose clock says ``now + LATER`` finds
the delivery's next attempt due."""


async def _handle(
    rt: Runtime,
    client: httpx.AsyncClient,
    event: ev.Event[Any],
    deliveries: int,
    max_attempts: int = 5,
    *,
    at: datetime | None = None,
) -> tuple[list[ev.Event[Any]], datetime | None]:
    """Drive the handler as the consume loop does, its clock saying ``at`` (default: now):
    commit each batch it yields; return the events and when the delivery's next attempt
    is due on the schedule (``None``: it was not put back on it). The loop's skip of
    finished work is not here; the _Loop tests below run the loop itself. The attempt
    number comes from the log, whatever ``deliveries`` says."""
    delivery_id = event.data.delivery_id
    # The scheduler takes a row off the schedule when it publishes the message again.
    await rt.pool.execute("DELETE FROM delivery_schedule WHERE delivery_id = $1", delivery_id)
    handler = make_handler(
        client, rt.pool, max_attempts, clock=(lambda: at) if at else retryafter.utcnow
    )
    incoming = Incoming(event=event, subject="s", deliveries=deliveries, _msg=_NoMsg())  # type: ignore[arg-type]
    out: list[ev.Event[Any]] = []
    async for item in handler(incoming):
        batch = [item] if isinstance(item, ev.Event) else list(item)
        await rt.outbox.commit_and_publish(batch)
        out.extend(batch)
    return out, await schedule.next_due(rt.pool, delivery_id)


async def _outcomes(rt: Runtime, req: ev.Event[Any]) -> list[tuple[str, int, int | None]]:
    """(type, attempt, status_code) of every delivery event recorded after ``req``."""
    async with rt.pool.acquire() as conn:
        chain = await eventlog.chain(conn, req.id)
    out = []
    for logged in chain[1:]:
        data = msgspec.json.decode(logged.event.data, type=ev.DeliveryOutcome)
        out.append((logged.event.type.split(".")[3], data.attempt, data.status_code))
    return out


async def _status(rt: Runtime, delivery_id: str) -> tuple[str, int, int | None]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, attempts, last_status_code FROM deliveries WHERE delivery_id = $1",
            delivery_id,
        )
    assert row is not None
    return row["status"], row["attempts"], row["last_status_code"]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- tests


async def test_a_2xx_records_attempted_and_succeeded(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer(204)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    out, retry = await _handle(rt, client, req, deliveries=1)
    assert retry is None
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    assert await _outcomes(rt, req) == [("attempted", 1, 204), ("succeeded", 1, 204)]
    assert await _status(rt, "dlv_t") == ("succeeded", 1, 204)
    (got,) = sink.received
    assert (got.method, got.path, got.body) == ("POST", "/hook", BODY)
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-team"] == "ops"
    assert got.headers["user-agent"] == USER_AGENT
    assert got.headers["x-hookbus-delivery"] == "dlv_t"


async def test_a_500_then_a_200_records_two_attempts_and_one_success_under_one_delivery_id(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer(500, 200)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    _, due = await _handle(rt, client, req, deliveries=1)
    assert due is not None
    assert await _status(rt, "dlv_t") == ("retrying", 1, 500)
    _, due = await _handle(rt, client, req, deliveries=2, at=datetime.now(UTC) + LATER)
    assert due is None
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 500),
        ("attempted", 2, 200),
        ("succeeded", 2, 200),
    ]
    assert await _status(rt, "dlv_t") == ("succeeded", 2, 200)
    assert [r.headers["x-hookbus-delivery"] for r in sink.received] == ["dlv_t", "dlv_t"]
    assert [r.body for r in sink.received] == [BODY, BODY]


async def test_a_429_with_retry_after_seconds_waits_that_long(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer((429, {"retry-after": "7"}))
    req = _request(sink.url)
    await rt.outbox.commit([req])
    now = datetime.now(UTC)
    out, due = await _handle(rt, client, req, deliveries=1, at=now)
    assert due == now + timedelta(seconds=7)
    assert out[0].data.next_attempt_at == due
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted]
    assert await _status(rt, "dlv_t") == ("retrying", 1, 429)


async def test_a_503_with_an_http_date_waits_until_that_date(
    client: httpx.AsyncClient, sink: Sink
) -> None:
    # Measured against the clock handed in, so the wait is exact whatever the time now.
    sink.answer((503, {"retry-after": "Wed, 21 Oct 2037 07:28:00 GMT"}))
    then = datetime.fromisoformat("2037-10-21T07:26:30+00:00")
    out, retry = await attempt(client, _request(sink.url), 1, 5, clock=lambda: then)
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted]
    assert retry is not None
    assert retry.delay == 90.0


async def test_an_http_date_retry_after_reaches_the_handler_against_the_real_clock(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(minutes=10), usegmt=True)
    past = "Sun, 06 Nov 1994 08:49:37 GMT"
    sink.answer((503, {"retry-after": soon}), (503, {"retry-after": past}))
    req = _request(sink.url)
    await rt.outbox.commit([req])
    before = datetime.now(UTC)
    _, due = await _handle(rt, client, req, deliveries=1)
    assert due is not None
    # Ten minutes ahead (loose: no timing bound).
    assert timedelta(seconds=60) < due - before <= timedelta(seconds=600)
    later = before + LATER
    _, due = await _handle(rt, client, req, deliveries=2, at=later)
    assert due == later  # a date gone by means "now"


async def test_a_404_is_final_failed_with_no_retry(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer(404)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    out, retry = await _handle(rt, client, req, deliveries=1)
    assert retry is None
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert await _outcomes(rt, req) == [("attempted", 1, 404), ("failed", 1, 404)]
    assert await _status(rt, "dlv_t") == ("failed", 1, 404)
    assert len(sink.received) == 1


async def test_a_redirect_is_not_followed_and_is_final(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer((307, {"location": sink.url + "/elsewhere"}))
    req = _request(sink.url)
    await rt.outbox.commit([req])
    _, retry = await _handle(rt, client, req, deliveries=1)
    assert retry is None
    assert await _outcomes(rt, req) == [("attempted", 1, 307), ("failed", 1, 307)]
    assert [r.path for r in sink.received] == ["/hook"]


async def test_the_last_allowed_attempt_failing_records_dead(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer(503)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    _, due = await _handle(rt, client, req, deliveries=1, max_attempts=2)
    assert due is not None
    out, due = await _handle(
        rt, client, req, deliveries=2, max_attempts=2, at=datetime.now(UTC) + LATER
    )
    assert due is None
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliveryDead]
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 503),
        ("attempted", 2, 503),
        ("dead", 2, 503),
    ]
    assert await _status(rt, "dlv_t") == ("dead", 2, 503)


async def test_a_refused_connection_is_retried_on_the_schedule(
    rt: Runtime, client: httpx.AsyncClient, closed_url: str
) -> None:
    req = _request(closed_url)
    await rt.outbox.commit([req])
    now = datetime.now(UTC)
    out, due = await _handle(rt, client, req, deliveries=1, at=now)
    assert due is not None
    # The default schedule's first wait, 5 s ± 10%: no Retry-After to go on.
    assert timedelta(seconds=4.5) <= due - now <= timedelta(seconds=5.5)
    (attempted,) = out
    assert attempted.data.status_code is None
    assert attempted.data.error is not None
    assert attempted.data.error.startswith("ConnectError")
    assert await _status(rt, "dlv_t") == ("retrying", 1, None)


async def test_a_repeated_attempt_records_once_and_resends_the_same_delivery_id(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # The process died after sending attempt 1 but before recording it: the log has no
    # attempt, so the redelivery makes attempt 1 again. The request goes out again (at
    # least once), with the same delivery id, and the log holds one attempt 1.
    sink.answer(500)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    sent, _ = await attempt(client, req, 1, 5)  # sent; never recorded
    assert [type(e.data) for e in sent] == [ev.DeliveryAttempted]
    _, due = await _handle(rt, client, req, deliveries=2)
    assert due is not None
    assert await _outcomes(rt, req) == [("attempted", 1, 500)]
    assert [r.headers["x-hookbus-delivery"] for r in sink.received] == ["dlv_t", "dlv_t"]


async def test_a_redelivery_before_the_next_attempt_is_due_sends_nothing_and_keeps_it_due(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # The process died after recording attempt 1 but before its schedule row was written
    # (or the message came back for any other reason): the message is handled again
    # before the attempt is due. Nothing is sent; the row is written with the due time the
    # attempt recorded. Once that time has come, the request that goes out is attempt 2.
    sink.answer(500)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    now = datetime.now(UTC)
    out, due = await _handle(rt, client, req, deliveries=1, at=now)
    assert due is not None
    out, again = await _handle(rt, client, req, deliveries=1, at=now + timedelta(seconds=1))
    assert out == []
    assert again == due
    assert len(sink.received) == 1
    _, _ = await _handle(rt, client, req, deliveries=1, at=now + LATER)
    assert await _outcomes(rt, req) == [("attempted", 1, 500), ("attempted", 2, 500)]
    assert await _status(rt, "dlv_t") == ("retrying", 2, 500)
    assert len(sink.received) == 2


async def test_the_attempt_number_is_what_the_log_records_not_the_delivery_count(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    sink.answer(503)
    req = _request(sink.url)
    await rt.outbox.commit([req])
    _, due = await _handle(rt, client, req, deliveries=1, max_attempts=3)
    assert due is not None
    # Delivered many times since (outages, crashes before sending): still attempt 2, and
    # not the last one.
    later = datetime.now(UTC) + LATER
    _, due = await _handle(rt, client, req, deliveries=9, max_attempts=3, at=later)
    assert due is not None
    assert await _outcomes(rt, req) == [("attempted", 1, 503), ("attempted", 2, 503)]


class _Loop:
    """The real consume loop on real NATS, built as the dispatcher's main() builds it; it
    keeps JetStream's delivery count of each message the handler is given."""

    def __init__(
        self,
        rt: Runtime,
        client: httpx.AsyncClient,
        max_attempts: int = 5,
        *,
        scheduling: bool = True,
    ) -> None:
        self.rt = rt
        self.stop = asyncio.Event()
        self.deliveries: list[int] = []
        # The scheduler main() runs beside the loop: it publishes deliveries when due.
        self.scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow)
        self.scheduling = scheduling
        handle = make_handler(client, rt.pool, max_attempts, scheduler=self.scheduler)

        async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
            self.deliveries.append(incoming.deliveries)
            async for out in handle(incoming):
                yield out

        self.consumer = dispatcher_consumer(rt, handler, max_attempts=max_attempts)
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> _Loop:
        self.tasks.append(asyncio.create_task(self.consumer.run(self.stop)))
        if self.scheduling:
            self.tasks.append(asyncio.create_task(self.scheduler.run(self.stop)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)

    async def idle(self) -> bool:
        """Every message delivered and settled."""
        info = await self.rt.bus.js.consumer_info(self.rt.bus.stream, self.consumer.durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_through_the_consume_loop_a_503_is_retried_when_retry_after_says(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # The failed attempt is put on the schedule for the receiver's Retry-After (0: at
    # once); the scheduler publishes the request again and it is attempt 2, under the
    # same delivery id. The first message was acked when attempt 1 failed: waiting held
    # none of the consumer's capacity.
    sink.answer((503, {"retry-after": "0"}), 200)
    req = _request(sink.url)
    async with _Loop(rt, client) as loop:
        await rt.outbox.commit_and_publish([req])

        async def succeeded() -> bool:
            return ("succeeded", 2, 200) in await _outcomes(rt, req)

        await _until(succeeded)
        await _until(loop.idle)
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 503),
        ("attempted", 2, 200),
        ("succeeded", 2, 200),
    ]
    assert [r.headers["x-hookbus-delivery"] for r in sink.received] == ["dlv_t", "dlv_t"]


async def test_through_the_consume_loop_a_finished_delivery_is_not_sent_again(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # The same request reaching the loop again after its outcome is recorded (as when the
    # process died before the ack) is settled without another request to the receiver.
    sink.answer(200)
    req = _request(sink.url)
    async with _Loop(rt, client) as loop:
        await rt.outbox.commit_and_publish([req])

        async def succeeded() -> bool:
            return ("succeeded", 1, 200) in await _outcomes(rt, req)

        await _until(succeeded)
        await _until(loop.idle)
        # Another message id, so JetStream's duplicate window does not drop it.
        ack = await rt.bus.js.publish(
            req.bus_subject(rt.bus.prefix),
            msgspec.json.encode(req),
            headers={"Nats-Msg-Id": "again-" + req.id},
        )

        async def settled() -> bool:
            info = await rt.bus.js.consumer_info(rt.bus.stream, loop.consumer.durable)
            return bool(info.ack_floor.stream_seq >= ack.seq)

        await _until(settled)
    assert len(sink.received) == 1
    assert await _outcomes(rt, req) == [("attempted", 1, 200), ("succeeded", 1, 200)]


# ------------------------------------------------- redeliveries that are not attempts


async def _delivered_without_attempt(rt: Runtime, times: int) -> int:
    """Take the delivery's message from the dispatcher's durable ``times`` times and give it
    back unhandled, as dispatchers that died before sending (or a nak per outage, before
    outages were waited out) would; returns JetStream's delivery count so far."""
    sub = await rt.bus.ensure_consumer(durable(rt), [subject(rt)])
    try:
        for _ in range(times):
            (msg,) = await sub.fetch(1, timeout=10)
            await msg.nak()
    finally:
        await sub.unsubscribe()
    return int(msg.metadata.num_delivered or 0)


async def _dead_letters(rt: Runtime) -> int:
    async with rt.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE type = $1", ev.MessageDeadLettered.TYPE
            )
        )


async def test_a_delivery_is_dead_only_after_max_attempts_real_requests(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # Delivered four times before any request went out: the first request is still
    # attempt 1, the delivery is dead after the third request, and the consumer's
    # max_deliver (its safety net) does not cut it short.
    sink.answer((503, {"retry-after": "0"}))
    req = _request(sink.url)
    await rt.outbox.commit_and_publish([req])
    assert await _delivered_without_attempt(rt, 4) == 4
    async with _Loop(rt, client, max_attempts=3) as loop:

        async def dead() -> bool:
            return ("dead", 3, 503) in await _outcomes(rt, req)

        await _until(dead)
        await _until(loop.idle)
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 503),
        ("attempted", 2, 503),
        ("attempted", 3, 503),
        ("dead", 3, 503),
    ]
    assert len(sink.received) == 3
    assert loop.deliveries[0] == 5  # attempt 1 came on the fifth delivery
    assert await _status(rt, "dlv_t") == ("dead", 3, 503)
    assert await _dead_letters(rt) == 0


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    yield from serving(tmp_path_factory.mktemp("own-pg") / "pg")


@pytest.fixture
async def own_rt(own_pg: OwnPostgres, settings: Settings) -> AsyncIterator[Runtime]:
    """This test's runtime, its pool on a Postgres the test may stop."""
    async with runtime_on(own_pg, settings) as rt:
        yield rt


async def test_a_postgres_outage_between_attempts_leaves_the_attempt_number_alone(
    own_rt: Runtime, own_pg: OwnPostgres, client: httpx.AsyncClient, sink: Sink
) -> None:
    # Attempt 1 failed; the message came back four times without an attempt; then
    # Postgres stops. The loop takes the message a fifth time and waits for Postgres
    # without sending anything (it cannot number an attempt); once Postgres is back, the
    # request that goes out is attempt 2.
    rt = own_rt
    sink.answer((503, {"retry-after": "0"}), 200)
    req = _request(sink.url)
    await rt.outbox.commit_and_publish([req])
    _, due = await _handle(rt, client, req, deliveries=1)
    assert due is not None
    assert await _delivered_without_attempt(rt, 4) == 4
    await own_pg.stop()
    async with _Loop(rt, client, scheduling=False) as loop:

        async def waiting() -> bool:
            return waiting_for_recovery(durable(rt)) >= 1

        await _until(waiting)
        assert len(sink.received) == 1  # nothing sent while the attempt has no number
        await own_pg.start()

        async def succeeded() -> bool:
            return ("succeeded", 2, 200) in await _outcomes(rt, req)

        await _until(succeeded, timeout=30)
        await _until(loop.idle)
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 503),
        ("attempted", 2, 200),
        ("succeeded", 2, 200),
    ]
    assert [r.headers["x-hookbus-delivery"] for r in sink.received] == ["dlv_t", "dlv_t"]
    # One delivery of the message (the fifth), handled again once Postgres was back: its
    # first read failed before anything was sent.
    assert set(loop.deliveries) == {5}
    info = await rt.bus.js.consumer_info(rt.bus.stream, durable(rt))
    assert info.delivered.consumer_seq == 5  # not delivered again while Postgres was away
    assert await _dead_letters(rt) == 0


# ------------------------------------------------------------- the durable schedule


async def test_a_delivery_waiting_for_its_next_attempt_holds_no_consumer_capacity(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    # A dead endpoint (503 for ever) with the default schedule: after attempt 1 the
    # delivery waits ~5 s, then ~5 min. Meanwhile its message is acked (nothing pending
    # in JetStream), it is on the schedule, and another delivery goes straight through.
    sink.answer(503)
    dead = _request(sink.url, delivery_id="dlv_dead")
    async with _Loop(rt, client) as loop:
        await rt.outbox.commit_and_publish([dead])

        async def waiting() -> bool:
            return await schedule.next_due(rt.pool, "dlv_dead") is not None

        await _until(waiting)
        await _until(loop.idle)
        info = await rt.bus.js.consumer_info(rt.bus.stream, loop.consumer.durable)
        assert info.num_ack_pending == 0
        assert await _status(rt, "dlv_dead") == ("retrying", 1, 503)

        sink.answer(200)
        live = _request(sink.url, delivery_id="dlv_live")
        await rt.outbox.commit_and_publish([live])

        async def delivered() -> bool:
            return ("succeeded", 1, 200) in await _outcomes(rt, live)

        await _until(delivered)
    due = await schedule.next_due(rt.pool, "dlv_dead")
    assert due is not None
    assert due > datetime.now(UTC)
    assert await _status(rt, "dlv_dead") == ("retrying", 1, 503)


async def test_the_scheduler_publishes_what_is_due_once_and_leaves_the_rest(
    rt: Runtime, client: httpx.AsyncClient, sink: Sink
) -> None:
    now = datetime.now(UTC)
    due_req = _request(sink.url, delivery_id="dlv_due")
    later_req = _request(sink.url, delivery_id="dlv_later")
    await rt.outbox.commit([due_req, later_req])
    await schedule.put(rt.pool, "dlv_due", due_req.id, 2, now - timedelta(seconds=1))
    await schedule.put(rt.pool, "dlv_later", later_req.id, 2, now + timedelta(hours=1))
    sub = await rt.bus.ensure_consumer(durable(rt), [subject(rt)])
    try:
        scheduler = Scheduler(rt.pool, rt.bus, clock=lambda: now)
        assert await scheduler.round() == 1
        assert await scheduler.round() == 0  # taken off the schedule: not published again
        (msg,) = await sub.fetch(1, timeout=10)
        await msg.ack()
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == f"{due_req.id}/retry/2"
        got = msgspec.json.decode(msg.data, type=ev.Event[ev.DeliveryRequested])
        assert got.id == due_req.id
        assert got.data == due_req.data
    finally:
        await sub.unsubscribe()
    assert await schedule.next_due(rt.pool, "dlv_due") is None
    assert await schedule.next_due(rt.pool, "dlv_later") == now + timedelta(hours=1)
