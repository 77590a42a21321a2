"""The whole path on real NATS and Postgres, as the dispatcher's main() runs it: the
consume loop and the scheduler beside it. A Discord notification whose receiver keeps
failing is tried on its (compressed) retry schedule, never before each attempt is due,
until it is dead; replayed from the dead-letter queue, it reaches the bus through the
outbox relay and is delivered."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_cli import deliveries, dlq
from hookbus_common.service import Runtime
from hookbus_dispatcher import retryafter
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.schedule import Scheduler
from hookbus_dispatcher.ssrf import guarded_client

from .dispatching import dispatcher_consumer
from .test_dispatcher import LOOPBACK, Sink, _status, _until
from .test_notify import _config, _request

pytestmark = pytest.mark.integration

SCHEDULE = (0.3, 0.6)  # seconds after attempts 1 and 2: three attempts


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


async def _history(rt: Runtime, delivery_id: str) -> list[tuple[str, datetime, Any]]:
    rows = await rt.pool.fetch(
        "SELECT type, time, data::text AS data FROM events"
        " WHERE type LIKE 'io.hookbus.delivery.%' AND data->>'delivery_id' = $1 ORDER BY seq",
        delivery_id,
    )
    return [(r["type"].split(".")[3], r["time"], msgspec.json.decode(r["data"])) for r in rows]


async def test_a_failing_notification_is_retried_on_schedule_dies_and_a_replay_delivers(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    text = f"""
[notifications.ops]
type = "discord"
url = {{ env = "OPS_HOOK" }}
retry_schedule = {list(SCHEDULE)}
template = "{{{{ sender }}}} pushed {{{{ branch }}}}"
"""
    config = _config(tmp_path, text, OPS_HOOK=sink.url)
    sink.answer(503)
    stop = asyncio.Event()
    async with guarded_client(allow_networks=LOOPBACK, timeout=10.0) as client:
        scheduler = Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow)
        handler = make_handler(
            client, rt.pool, 8, notifications=config.notifications, scheduler=scheduler
        )
        consumer = dispatcher_consumer(rt, handler, max_attempts=3)
        tasks = [
            asyncio.create_task(consumer.run(stop)),
            asyncio.create_task(scheduler.run(stop)),
        ]
        try:
            req = _request("ops", "dlv_loop")
            await rt.outbox.commit_and_publish([req])

            async def dead() -> bool:
                return (await _status(rt, "dlv_loop"))[0] == "dead"

            await _until(dead)
            history = await _history(rt, "dlv_loop")
            assert [h[0] for h in history] == [
                "requested", "attempted", "attempted", "attempted", "dead",
            ]  # fmt: skip
            attempts = [h for h in history if h[0] == "attempted"]
            assert [a[2]["status_code"] for a in attempts] == [503, 503, 503]
            # Each wait is the schedule's (±10%), and no attempt came before it was due.
            for (_, at, data), wait in zip(attempts, SCHEDULE, strict=False):
                due = datetime.fromisoformat(data["next_attempt_at"])
                assert wait * 0.9 - 0.05 <= (due - at).total_seconds() <= wait * 1.1 + 0.05
            for (_, _, before), (_, at, _) in itertools.pairwise(attempts):
                assert at >= datetime.fromisoformat(before["next_attempt_at"])
            assert attempts[-1][2]["next_attempt_at"] is None
            assert len(sink.received) == 3

            # From the dead-letter queue, again: the relay publishes the replay.
            sink.answer(204)
            async with rt.pool.acquire() as conn:
                (letter,) = await deliveries.select(conn, statuses=dlq.DEAD_LETTERS)
                (new_id,) = await dlq.replay(conn, rt.settings.prefix, [letter], requested_by="t")
            assert await rt.outbox.relay_once(older_than=0) >= 2

            async def delivered() -> bool:
                return (await _status(rt, new_id))[0] == "succeeded"

            await _until(delivered)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert len(sink.received) == 4
    body = msgspec.json.decode(sink.received[-1].body)
    assert body["content"] == "ana pushed main"
    assert sink.received[-1].headers["x-hookbus-delivery"] == new_id
    assert await _status(rt, new_id) == ("succeeded", 1, 204)
