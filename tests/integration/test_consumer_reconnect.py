"""A consume loop long-polls the bus; a NATS restart must not leave it waiting on a fetch
the restarted server has forgotten."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_cli.embedded import NatsServer
from hookbus_common import consumer as consume
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.service import runtime
from hookbus_common.settings import NatsSettings, Settings

from .test_consumer import Running, _job, until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_nats_restart_ends_the_long_fetch_and_new_messages_are_handled_at_once(
    settings: Settings, own_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fetch that would outlast the test: only the reconnect can end it in time.
    monkeypatch.setattr(consume, "FETCH_WAIT", 600.0)
    settings = msgspec.structs.replace(
        settings, nats=NatsSettings(url=own_nats.url, connect_timeout=10)
    )
    handled: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[list[ev.Event[Any]]]:
        handled.append(incoming.event.data.job_id)
        yield []

    async with runtime(settings, "test") as rt, Running(rt, handler):
        first = _job(1)
        await rt.outbox.commit_and_publish([first])
        await until(lambda: asyncio.sleep(0, "job_1" in handled), timeout=30)

        await asyncio.to_thread(own_nats.stop)
        await asyncio.to_thread(own_nats.start)
        await until(lambda: asyncio.sleep(0, rt.bus.connected), timeout=60)

        second = _job(2)
        await rt.outbox.commit_and_publish([second])
        # Well inside the fetch wait: the loop fetched again when the bus reconnected.
        await until(lambda: asyncio.sleep(0, "job_2" in handled), timeout=60)
    assert handled.count("job_1") == 1
