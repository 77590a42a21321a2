"""End to end: a dispatcher process SIGKILLed while its request is in the receiver's
hands, and another started in its place. The delivery ends once in the log, delivered."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.service import runtime
from hookbus_common.settings import DatabaseSettings, NatsSettings, Settings

from ..conftest import Servers
from .conftest import System

pytestmark = pytest.mark.e2e

DELIVERY = "dlv_kill"


class HoldingSink:
    """An endpoint on loopback that holds the first request it is sent (never answering
    it) until released, and answers every later one 200 at once; it counts requests by
    ``x-hookbus-delivery``."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    sink.hits.append(self.headers.get("x-hookbus-delivery", ""))
                    first = len(sink.hits) == 1
                if first:
                    sink.holding.set()
                    sink.release.wait(120)
                try:
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the dispatcher that sent it is gone

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HoldingSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _settings(system: System) -> Settings:
    env = system.env
    return Settings(
        prefix=env["HOOKBUS_PREFIX"],
        nats=NatsSettings(url=env["HOOKBUS_NATS__URL"], connect_timeout=10),
        database=DatabaseSettings(
            url=env["HOOKBUS_DATABASE__URL"], schema=env["HOOKBUS_DATABASE__SCHEMA"], pool_max=2
        ),
    )


def _request(url: str) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=DELIVERY, rule="notify", webhook_id="evt_w", url=url,
            headers={"content-type": "application/json"}, body=msgspec.Raw(b'{"n": 1}'),
            tenant="acme",
        ),
        source="/test",
    )  # fmt: skip


def _commit(system: System, event: ev.Event[Any]) -> None:
    """As the router records a delivery request: committed to the log, then published."""

    async def run() -> None:
        async with runtime(_settings(system), "test") as rt:
            await rt.outbox.commit_and_publish([event])

    asyncio.run(run())


def _after(system: System, event_id: str) -> list[tuple[str, int]]:
    """(type, attempt) of every event the request caused, in log order."""

    async def run() -> list[tuple[str, int]]:
        async with runtime(_settings(system), "test") as rt, rt.pool.acquire() as conn:
            chain = await eventlog.chain(conn, event_id)
        out = []
        for logged in chain[1:]:
            data = msgspec.json.decode(logged.event.data, type=ev.DeliveryOutcome)
            out.append((logged.event.type.split(".")[3], data.attempt))
        return out

    return asyncio.run(run())


def _wait(check: Callable[[], bool], what: str, system: System, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{system.log('dispatcher')}")
        time.sleep(0.05)


def _ready(system: System) -> bool:
    port = system.env["HOOKBUS_DISPATCHER__HEALTH_PORT"]
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_dispatcher_killed_mid_attempt_is_replaced_and_the_delivery_ends_once(
    servers: Servers, make_system: Callable[..., System]
) -> None:
    with HoldingSink() as sink:
        system = make_system('[log]\nlevel = "DEBUG"\n', servers)
        # The killed dispatcher's message comes back to the next one soon.
        system.env["HOOKBUS_DISPATCHER__ACK_WAIT_SECONDS"] = "2"
        system.start("dispatcher")
        _wait(lambda: _ready(system), "the first dispatcher", system)
        request = _request(sink.url)
        _commit(system, request)
        _wait(sink.holding.is_set, "the request to reach the sink", system)

        system.kill("dispatcher")  # SIGKILL while the sink holds its request
        assert _after(system, request.id) == []  # the attempt was never recorded
        system.start("dispatcher")

        def ended() -> bool:
            return any(t != "attempted" for t, _ in _after(system, request.id))

        _wait(ended, "the delivery's outcome", system)
        events = _after(system, request.id)
    # One outcome, delivered; the attempt the killed process made is made again under
    # the same number (it was never recorded) or, at most, the next; each number once.
    outcomes = [e for e in events if e[0] != "attempted"]
    assert [t for t, _ in outcomes] == ["succeeded"]
    numbers = [n for t, n in events if t == "attempted"]
    assert numbers == sorted(set(numbers))
    assert set(numbers) <= {1, 2}
    assert outcomes[0][1] == numbers[-1]
    # At least once: the request went out again, under the same delivery id.
    assert sink.hits == [DELIVERY, DELIVERY]
