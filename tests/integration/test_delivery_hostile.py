"""The dispatcher against receivers that misbehave on the wire: a real HTTP server on
loopback (raw sockets, its own threads) whose answers trickle in a byte at a time or whose
connection is reset in the middle of the request, with real Postgres and real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_dispatcher import delivery, retryafter
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .dispatching import dispatcher_consumer
from .test_dispatcher import LOOPBACK, _handle, _outcomes, _status, _until

pytestmark = pytest.mark.integration

GAP = 0.2
"""Seconds between the bytes of a trickled answer: well inside every read timeout here, so
no single read ever times out."""

GIVE_UP = 60.0
"""A trickle stops after this long, so a dispatcher that never gives up fails the test
(by its own bound) instead of hanging it."""

# ------------------------------------------------------------------------------ sink


class Hostile:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request as its script says (the
    last behaviour repeats):

    - ``ok``: reads the request, answers 200 and closes;
    - ``reset``: reads the request's head and 1 KB of its body, then resets the
      connection (RST: SO_LINGER 0);
    - ``trickle-head``: reads the request, then sends the answer's status line and headers
      one byte every ``GAP`` seconds, never finishing them;
    - ``trickle-body``: reads the request, sends a complete 200 head announcing 100 KB,
      then the body one byte every ``GAP`` seconds.

    It keeps each request's ``x-hookbus-delivery`` and behaviour, and notes when a
    trickle's client went away."""

    def __init__(self) -> None:
        self.script = ["ok"]
        self.requests: list[tuple[str, str]] = []
        self.gone = threading.Event()
        lock = threading.Lock()
        sink = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                raw, _, body = head.partition(b"\r\n\r\n")
                headers = {}
                for line in raw.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                with lock:
                    behaviour = sink.script[0]
                    if len(sink.script) > 1:
                        sink.script.pop(0)
                    sink.requests.append((headers.get("x-hookbus-delivery", ""), behaviour))
                length = int(headers.get("content-length", "0"))
                if behaviour == "reset":
                    while len(body) < min(length, 1024):
                        chunk = conn.recv(1024)
                        if not chunk:
                            return
                        body += chunk
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    return
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                if behaviour == "ok":
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    return
                if behaviour == "trickle-head":
                    prefix, rest = b"", b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 10_000
                else:
                    prefix = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n"
                    rest = b"x" * 100_000
                self._trickle(conn, prefix, rest)

            def _trickle(self, conn: socket.socket, prefix: bytes, rest: bytes) -> None:
                deadline = time.monotonic() + GIVE_UP
                try:
                    conn.sendall(prefix)
                    for i in range(len(rest)):
                        if time.monotonic() > deadline:
                            return
                        conn.sendall(rest[i : i + 1])
                        time.sleep(GAP)
                except OSError:  # the client closed the connection: it gave up
                    sink.gone.set()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def sink() -> Iterator[Hostile]:
    with Hostile() as s:
        yield s


def _request(url: str, body: bytes = b'{"n": 1}', delivery_id: str = "dlv_h") -> ev.Event[Any]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="notify", webhook_id="evt_w", url=url,
            headers={"content-type": "application/json"}, body=msgspec.Raw(body), tenant="acme",
        ),
        source="/test",
    )  # fmt: skip


# ----------------------------------------------------------------------------- tests


async def test_an_answer_whose_head_trickles_ends_at_the_attempts_timeout_with_an_error(
    rt: Runtime, sink: Hostile
) -> None:
    # Every byte comes inside the read timeout, so no single read times out; the attempt's
    # timeout (1 s, the client's) still bounds the whole exchange. The attempt is recorded
    # with no status and an error, the delivery waits for its next attempt, and the
    # connection is dropped.
    sink.script = ["trickle-head"]
    req = _request(sink.url)
    await rt.outbox.commit([req])
    async with guarded_client(allow_networks=LOOPBACK, timeout=1.0) as client:
        out, due = await asyncio.wait_for(_handle(rt, client, req, deliveries=1), GIVE_UP / 2)
    (attempted,) = out
    assert isinstance(attempted.data, ev.DeliveryAttempted)
    assert attempted.data.status_code is None
    assert attempted.data.error is not None
    assert "timed out" in attempted.data.error
    assert attempted.data.duration_ms >= 1000  # the timeout was given in full
    assert due is not None
    assert await _status(rt, "dlv_h") == ("retrying", 1, None)
    await _until(lambda: _is_set(sink.gone))
    assert sink.requests == [("dlv_h", "trickle-head")]


async def test_an_answer_whose_body_trickles_is_decided_by_its_status_and_cut_short(
    rt: Runtime, sink: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The status is in: the attempt is decided by it. The body gets its own allowance
    # (shortened here); what arrived by then is kept, and the connection is dropped
    # rather than held for the rest.
    monkeypatch.setattr(delivery, "RESPONSE_BODY_SECONDS", 1.0)
    sink.script = ["trickle-body"]
    req = _request(sink.url)
    await rt.outbox.commit([req])
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as client:
        out, due = await asyncio.wait_for(_handle(rt, client, req, deliveries=1), GIVE_UP / 2)
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    attempted = out[0].data
    assert isinstance(attempted, ev.DeliveryAttempted)
    assert attempted.status_code == 200
    assert attempted.response_body is not None
    assert 0 < len(attempted.response_body) < 100
    assert set(attempted.response_body) == {"x"}
    assert due is None
    assert await _status(rt, "dlv_h") == ("succeeded", 1, 200)
    await _until(lambda: _is_set(sink.gone))


async def _is_set(event: threading.Event) -> bool:
    return event.is_set()


@contextlib.asynccontextmanager
async def _dispatcher(rt: Runtime, schedule: list[float]) -> AsyncIterator[None]:
    """The consume loop and the scheduler as the dispatcher's main() runs them, on a
    compressed retry schedule."""
    stop = asyncio.Event()
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as client:
        scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow, idle_interval=0.2)
        attempts = len(schedule) + 1
        handler = make_handler(
            client, rt.pool, attempts, scheduler=scheduler, retry_schedule=schedule
        )
        consumer = dispatcher_consumer(rt, handler, max_attempts=attempts)
        tasks = [
            asyncio.create_task(consumer.run(stop)),
            asyncio.create_task(scheduler.run(stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_connection_reset_mid_request_is_retried_on_the_schedule(
    rt: Runtime, sink: Hostile
) -> None:
    # The receiver resets the connection after 1 KB of a 256 KB body: attempt 1 is
    # recorded with the error and no status, its next attempt is due after the schedule's
    # first wait (0.5 s, spread by ±10 %), and attempt 2, under the same delivery id,
    # succeeds.
    sink.script = ["reset", "ok"]
    req = _request(sink.url, body=b'"' + b"a" * 256 * 1024 + b'"')
    async with _dispatcher(rt, [0.5, 0.5]):
        await rt.outbox.commit_and_publish([req])

        async def succeeded() -> bool:
            return ("succeeded", 2, 200) in await _outcomes(rt, req)

        await _until(succeeded)
    assert await _outcomes(rt, req) == [
        ("attempted", 1, None),
        ("attempted", 2, 200),
        ("succeeded", 2, 200),
    ]
    assert sink.requests == [("dlv_h", "reset"), ("dlv_h", "ok")]
    first = await _attempt(rt, req, 1)
    assert first.error is not None
    assert not first.error.startswith("request cannot be sent")
    assert first.next_attempt_at is not None
    wait = first.next_attempt_at - await _recorded_at(rt, req, 1)
    assert timedelta(seconds=0.3) <= wait <= timedelta(seconds=0.7)
    assert await _status(rt, "dlv_h") == ("succeeded", 2, 200)


async def _attempt(rt: Runtime, req: ev.Event[Any], number: int) -> ev.DeliveryAttempted:
    text = await rt.pool.fetchval(
        "SELECT data::text FROM events WHERE id = $1", ev.derived_id(req.id, f"attempt/{number}")
    )
    assert text is not None
    return msgspec.json.decode(text, type=ev.DeliveryAttempted)


async def _recorded_at(rt: Runtime, req: ev.Event[Any], number: int) -> Any:
    return await rt.pool.fetchval(
        "SELECT recorded_at FROM events WHERE id = $1", ev.derived_id(req.id, f"attempt/{number}")
    )
