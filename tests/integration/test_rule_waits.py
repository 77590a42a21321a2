"""Multi-event rules against real Postgres and NATS, through the router's real consume
loop: fired once for two events in either order, never for one, never twice on a
redelivery, across a router restart, and once with two routers on one durable; a wait
whose window passed is recorded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.consumer import Consumer
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings
from hookbus_router import config as router
from hookbus_router import waits
from hookbus_router.routing import FILTER_TOKENS, make_handler

from .test_cli import hookbus
from .test_cli_rules import env_for
from .test_consumer import until

pytestmark = pytest.mark.integration

RULES = """
[sources.github]
kind = "github"
secrets = [{ value = "s" }]

[[rules]]
name = "deploy-green"
key = "{{ event.commit }}"
window = "1h"
actions = [{ kind = "shell", command = ["./deploy.sh", "{{ event.commit }}",
             "{{ events[1].payload.image }}"] }]
[[rules.events]]
source = "github"
event = "check_suite"
when = { path = "payload.conclusion", equals = "success" }
[[rules.events]]
source = "image-push"
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Router:
    """One router replica: its real consume loop on the shared durable, with the waits
    in Postgres."""

    def __init__(self, rt: Runtime, rules: list[router.Rule], clock: Callable[[], datetime]):
        self.rt = rt
        self.stop = asyncio.Event()
        self.store = waits.PgStore(rt.pool, rt.outbox)
        self.consumer = Consumer(
            service="router",
            bus=rt.bus,
            outbox=rt.outbox,
            durable=f"{rt.bus.prefix}-router",
            filter_subjects=[".".join((rt.bus.prefix, *t, ">")) for t in FILTER_TOKENS],
            handler=make_handler(rules, store=self.store, clock=clock),
            max_in_flight=8,
            max_deliver=5,
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Router:
        self.task = asyncio.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


@pytest.fixture
def rules(tmp_path: Path) -> list[router.Rule]:
    path = tmp_path / "hookbus.toml"
    path.write_text(RULES)
    return router.load(path, {}).rules


def check_suite(commit: str, conclusion: str = "success") -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="check_suite",
        commit=commit,
        payload=msgspec.Raw(msgspec.json.encode({"conclusion": conclusion})),
    )
    return ev.make_event(data, source="/hookbus/receiver/github")


def image_push(commit: str) -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="image-push",
        kind="image",
        event_type="push",
        commit=commit,
        payload=msgspec.Raw(msgspec.json.encode({"image": f"ghcr.io/acme/app:{commit}"})),
    )
    return ev.make_event(data, source="/hookbus/receiver/image-push")


async def of_type(rt: Runtime, cls: type[ev.EventData]) -> list[Any]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT data FROM events WHERE type = $1 ORDER BY seq", cls.TYPE)
    return [msgspec.json.decode(r["data"].encode(), type=cls) for r in rows]


async def routed_for(rt: Runtime, event_id: str) -> ev.WebhookRouted | None:
    found = [r for r in await of_type(rt, ev.WebhookRouted) if r.webhook_id == event_id]
    return found[0] if found else None


async def routed(rt: Runtime, event: ev.Event[Any]) -> ev.WebhookRouted:
    async def there() -> bool:
        return await routed_for(rt, event.id) is not None

    await until(there)
    found = await routed_for(rt, event.id)
    assert found is not None
    return found


async def send(rt: Runtime, event: ev.Event[Any]) -> None:
    await rt.outbox.commit_and_publish([event])


async def redeliver(rt: Runtime, event: ev.Event[Any], n: int = 1) -> None:
    """The same event reaches the routers again (another message id, so JetStream's own
    dedupe does not hide it)."""
    await rt.bus.publish(
        event.bus_subject(rt.bus.prefix), f"{event.id}-again-{n}", ev.encode(event)
    )


async def drained(rt: Runtime) -> None:
    async def empty() -> bool:
        info = await rt.bus.js.consumer_info(rt.bus.stream, f"{rt.bus.prefix}-router")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await until(empty)


@pytest.mark.parametrize("order", ["check-first", "push-first"])
async def test_two_events_fire_once_in_either_order_and_not_again_when_redelivered(
    rt: Runtime, rules: list[router.Rule], order: str
) -> None:
    ci, push = check_suite("c0ffee"), image_push("c0ffee")
    first, second = (ci, push) if order == "check-first" else (push, ci)
    async with Router(rt, rules, Clock()):
        await send(rt, first)
        waiting = await routed(rt, first)
        assert waiting.matched == []
        assert waiting.requested == []
        assert await of_type(rt, ev.JobRequestedV2) == []
        async with rt.pool.acquire() as conn:
            [wait] = await waits.open_waits(conn)
        assert (wait.rule, wait.key, list(wait.arrived.values())) == (
            "deploy-green",
            "c0ffee",
            [first.id],
        )

        await send(rt, second)
        fired = await routed(rt, second)
        await redeliver(rt, second)
        await redeliver(rt, first)
        await drained(rt)

    assert fired.matched == ["deploy-green"]
    assert fired.joined == [
        ev.JoinedEvents(rule="deploy-green", key="c0ffee", events=[ci.id, push.id])
    ]
    [job] = await of_type(rt, ev.JobRequestedV2)
    assert job.spec.command == ["./deploy.sh", "c0ffee", "ghcr.io/acme/app:c0ffee"]
    assert job.webhook_id == second.id
    assert len([r for r in await of_type(rt, ev.WebhookRouted) if r.joined]) == 1
    async with rt.pool.acquire() as conn:
        assert await waits.open_waits(conn) == []


async def test_one_event_or_a_failed_check_never_fires(
    rt: Runtime, rules: list[router.Rule]
) -> None:
    async with Router(rt, rules, Clock()):
        await send(rt, check_suite("aaa", "failure"))
        await send(rt, image_push("aaa"))
        await send(rt, check_suite("bbb"))
        await send(rt, image_push("ccc"))
        await drained(rt)

    assert await of_type(rt, ev.JobRequestedV2) == []
    async with rt.pool.acquire() as conn:
        keys = sorted(w.key for w in await waits.open_waits(conn))
    assert keys == ["aaa", "bbb", "ccc"]


async def test_a_wait_outlives_a_router_restart(rt: Runtime, rules: list[router.Rule]) -> None:
    ci, push = check_suite("feed"), image_push("feed")
    async with Router(rt, rules, Clock()):
        await send(rt, ci)
        await routed(rt, ci)
        await drained(rt)
    # No router runs now; a new one takes over from the durable and the table.
    await send(rt, push)
    async with Router(rt, rules, Clock()):
        fired = await routed(rt, push)
        await drained(rt)

    assert fired.matched == ["deploy-green"]
    assert len(await of_type(rt, ev.JobRequestedV2)) == 1


async def test_two_routers_on_one_durable_fire_each_key_once(
    rt: Runtime, rules: list[router.Rule]
) -> None:
    commits = [f"c{n:02d}" for n in range(24)]
    events: list[ev.Event[Any]] = []
    for n, commit in enumerate(commits):
        pair = [check_suite(commit), image_push(commit)]
        events.extend(pair if n % 2 else pair[::-1])
    clock = Clock()
    async with Router(rt, rules, clock), Router(rt, rules, clock):
        await rt.outbox.commit_and_publish(events)
        for n, event in enumerate(events[:12]):
            await redeliver(rt, event, n)
        await drained(rt)

    jobs = await of_type(rt, ev.JobRequestedV2)
    assert sorted(j.spec.command[1] for j in jobs) == commits
    firings = [r for r in await of_type(rt, ev.WebhookRouted) if r.joined]
    assert sorted(f.joined[0].key for f in firings) == commits


async def test_a_wait_whose_window_passed_is_recorded_once_and_the_next_event_waits_anew(
    rt: Runtime, rules: list[router.Rule]
) -> None:
    clock = Clock()
    ci = check_suite("old")
    async with Router(rt, rules, clock) as r:
        await send(rt, ci)
        await routed(rt, ci)
        clock.now += timedelta(hours=2)
        stop = asyncio.Event()
        sweepers = [
            asyncio.create_task(waits.run_sweeper(r.store, stop, interval=0.05, clock=clock))
            for _ in range(2)
        ]

        async def recorded() -> bool:
            return len(await of_type(rt, ev.RuleWaitExpired)) == 1

        await until(recorded)
        await asyncio.sleep(0.2)  # more sweeps, by both
        stop.set()
        await asyncio.gather(*sweepers)
        push = image_push("old")
        await send(rt, push)
        late = await routed(rt, push)
        await drained(rt)

    [expired] = await of_type(rt, ev.RuleWaitExpired)
    assert (expired.rule, expired.key) == ("deploy-green", "old")
    assert expired.arrived == {"0": ci.id}
    assert expired.missing == [1]
    assert late.matched == []
    assert await of_type(rt, ev.JobRequestedV2) == []
    async with rt.pool.acquire() as conn:
        [wait] = await waits.open_waits(conn)
        chain = await conn.fetchval(
            "SELECT correlation_id FROM events WHERE type = $1", ev.RuleWaitExpired.TYPE
        )
    assert wait.arrived == {"1": push.id}
    assert chain == ci.correlationid


async def test_an_event_after_the_window_records_the_expiry_even_before_a_sweep(
    rt: Runtime, rules: list[router.Rule]
) -> None:
    clock = Clock()
    ci, push = check_suite("late"), image_push("late")
    async with Router(rt, rules, clock):
        await send(rt, ci)
        await routed(rt, ci)
        clock.now += timedelta(hours=1, seconds=1)
        await send(rt, push)
        late = await routed(rt, push)
        await drained(rt)

    assert late.matched == []
    [expired] = await of_type(rt, ev.RuleWaitExpired)
    assert expired.arrived == {"0": ci.id}
    assert await of_type(rt, ev.JobRequestedV2) == []


async def test_hookbus_rules_waits_lists_the_open_waits(
    rt: Runtime, settings: Settings, tmp_path: Path
) -> None:
    store = waits.PgStore(rt.pool, rt.outbox)
    now = datetime.now(UTC)
    for n, (key, part) in enumerate([("abc", 0), ("def", 1), ("ghi", 0), ("ghi", 1)]):
        await store.arrive(
            waits.Arrival(
                rule="deploy-green", key=key, part=part, of=2, event_id=f"evt_{n}", now=now,
                window=3600.0 + n,
            )
        )  # fmt: skip
    (tmp_path / "hookbus.toml").write_text("")

    out = hookbus("rules", "waits", env=env_for(settings), cwd=tmp_path)
    as_json = hookbus("rules", "waits", "--json", env=env_for(settings), cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("deploy-green  key 'abc'  1 of 2 events  expires in ")
    assert lines[1:3] == ["  events[0]  evt_0", "  events[1]  (waiting)"]
    assert lines[3].startswith("deploy-green  key 'def'")
    assert "ghi" not in out.stdout  # it fired: no longer open
    listed = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(w["key"], w["arrived"], w["missing"]) for w in listed] == [
        ("abc", {"0": "evt_0"}, [1]),
        ("def", {"1": "evt_1"}, [0]),
    ]
