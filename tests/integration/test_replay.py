"""A replay of a routed webhook, through the router's real consumer, NATS and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Consumer
from hookbus_common.service import Runtime
from hookbus_router.config import Rule, ShellAction
from hookbus_router.routing import FILTER_TOKENS, make_handler

from .test_consumer import until

pytestmark = pytest.mark.integration

RULES = [
    Rule(name="deploy", branch="main", actions=[ShellAction(command=["./deploy.sh"])]),
    Rule(name="test", actions=[ShellAction(command=["./test.sh"]), ShellAction(command=["./x"])]),
    Rule(name="never", branch="dev", actions=[ShellAction(command=["./never.sh"])]),
]


def _webhook() -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", delivery_id="d-1",
        payload=msgspec.Raw(b'{"ref": "refs/heads/main"}'), repository="acme/app", branch="main",
    )  # fmt: skip
    return ev.make_event(data, source="/hookbus/receiver/github", tenant="acme", subject="acme/app")


def _replay(hook: ev.Event[ev.WebhookReceived]) -> ev.Event[ev.WebhookReplayed]:
    data = ev.WebhookReplayed(
        replay_of=hook.id, webhook=hook.data, requested_by="alice", reason="deploy host was down"
    )
    return ev.make_event(data, source="/hookbus/cli", tenant=hook.tenant, subject=hook.subject)


class Chain(msgspec.Struct, frozen=True):
    routed: ev.Event[ev.WebhookRouted]
    jobs: list[ev.Event[ev.JobRequestedV2]]


async def _chain(rt: Runtime, root: str) -> Chain:
    """What the router recorded for the event ``root``: its routing record and requests."""
    async with rt.pool.acquire() as conn:
        rows = await eventlog.chain(conn, root)
    events = [ev.decode(r.payload()) for r in rows]
    (routed,) = [e for e in events if isinstance(e.data, ev.WebhookRouted)]
    jobs = [e for e in events if isinstance(e.data, ev.JobRequestedV2)]
    return Chain(routed=routed, jobs=jobs)


async def _count(rt: Runtime) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events"))


async def _routed(rt: Runtime, event_id: str) -> bool:
    async with rt.pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE type = $1 AND causation_id = $2",
                ev.WebhookRouted.TYPE,
                event_id,
            )
        )


class Router:
    """The router's consumer as its service runs it: its durable, filters and handler."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.durable = f"{rt.bus.prefix}-router"
        self.stop = asyncio.Event()
        self.consumer = Consumer(
            service="router",
            bus=rt.bus,
            outbox=rt.outbox,
            durable=self.durable,
            filter_subjects=[".".join((rt.bus.prefix, *t, ">")) for t in FILTER_TOKENS],
            handler=make_handler(RULES),
            max_in_flight=4,
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

    async def consuming_both(self) -> bool:
        """Whether its durable has taken the router's filters (it starts with the old one)."""
        info = await self.rt.bus.js.consumer_info(self.rt.bus.stream, self.durable)
        return len(info.config.filter_subjects or []) == len(FILTER_TOKENS)

    async def idle_after(self, messages: int) -> bool:
        """Whether it has had ``messages`` messages and has nothing left to do."""
        info = await self.rt.bus.js.consumer_info(self.rt.bus.stream, self.durable)
        idle = info.num_pending == 0 and info.num_ack_pending == 0
        return idle and info.delivered.consumer_seq >= messages


@pytest.fixture
async def router(rt: Runtime) -> AsyncIterator[Router]:
    # The durable as an older router left it: one filter, webhooks as received only.
    sub = await rt.bus.ensure_consumer(
        f"{rt.bus.prefix}-router", [f"{rt.bus.prefix}.webhook.received.>"]
    )
    await sub.unsubscribe()
    async with Router(rt) as r:
        await until(r.consuming_both)
        yield r


def _facts(jobs: list[ev.Event[ev.JobRequestedV2]]) -> list[Any]:
    return sorted((j.data.rule, j.data.spec.command, bytes(j.data.payload)) for j in jobs)


async def test_a_replay_makes_a_new_routing_record_and_new_job_requests(
    rt: Runtime, router: Router
) -> None:
    hook = _webhook()
    await rt.outbox.commit_and_publish([hook])
    await until(lambda: _routed(rt, hook.id))
    replay = _replay(hook)

    await rt.outbox.commit_and_publish([replay])
    await until(lambda: _routed(rt, replay.id))

    first, again = await _chain(rt, hook.id), await _chain(rt, replay.id)
    assert first.routed.data.replay_of is None
    assert again.routed.data.replay_of == hook.id
    assert again.routed.data.webhook_id == replay.id
    assert again.routed.data.matched == first.routed.data.matched == ["deploy", "test"]
    # The same jobs are asked for again, as new jobs of the replay's own chain.
    assert len(again.jobs) == len(first.jobs) == 3
    assert _facts(again.jobs) == _facts(first.jobs)
    assert not {j.id for j in again.jobs} & {j.id for j in first.jobs}
    assert not {j.data.job_id for j in again.jobs} & {j.data.job_id for j in first.jobs}
    assert all(j.correlationid == replay.id and j.tenant == "acme" for j in again.jobs)
    assert sorted(again.routed.data.requested) == sorted(j.id for j in again.jobs)


async def test_a_redelivered_replay_adds_nothing(rt: Runtime, router: Router) -> None:
    hook = _webhook()
    replay = _replay(hook)
    await rt.outbox.commit_and_publish([hook, replay])
    await until(lambda: _routed(rt, replay.id))
    await until(lambda: router.idle_after(2))
    recorded = await _count(rt)

    # The same replay event reaches the router again (a second message, so JetStream's
    # own dedupe by message id does not hide it).
    await rt.bus.publish(replay.bus_subject(rt.bus.prefix), f"{replay.id}-again", ev.encode(replay))
    await until(lambda: router.idle_after(3))

    assert await _count(rt) == recorded
    assert len((await _chain(rt, replay.id)).jobs) == 3


async def test_the_router_durable_takes_received_and_replayed_webhooks(
    rt: Runtime, router: Router
) -> None:
    info = await rt.bus.js.consumer_info(rt.bus.stream, router.durable)

    assert info.config.filter_subject is None
    assert sorted(info.config.filter_subjects or []) == [
        # Only the ends of jobs in a sequence (``.seq.<rule>``), never every job's.
        f"{rt.bus.prefix}.job.failed.*.seq.>",
        f"{rt.bus.prefix}.job.interrupted.*.seq.>",
        f"{rt.bus.prefix}.job.skipped.*.seq.>",
        f"{rt.bus.prefix}.job.succeeded.*.seq.>",
        f"{rt.bus.prefix}.rule.triggered.>",
        f"{rt.bus.prefix}.webhook.received.>",
        f"{rt.bus.prefix}.webhook.replayed.>",
    ]
