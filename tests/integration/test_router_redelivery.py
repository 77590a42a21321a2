"""A webhook delivered again after its routing was committed is not routed again, even
under rules changed in between (a lost ack, a router killed after its commit)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.service import Runtime
from hookbus_router.config import Rule, ShellAction
from hookbus_router.routing import make_handler, routed_id

pytestmark = pytest.mark.integration

BEFORE = [Rule(name="deploy", branch="main", actions=[ShellAction(command=["./deploy.sh"])])]
# A reload added a rule that also matches.
AFTER = [*BEFORE, Rule(name="notify", actions=[ShellAction(command=["./notify.sh"])])]


def _webhook() -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", delivery_id="d-redelivered",
        payload=msgspec.Raw(b'{"ref": "refs/heads/main"}'), repository="acme/app", branch="main",
    )  # fmt: skip
    return ev.make_event(data, source="/hookbus/receiver/github", tenant="acme")


async def _route(
    rt: Runtime, rules: list[Rule], event: ev.Event[Any], deliveries: int
) -> list[ev.Event[Any]]:
    async def routed_before(event_id: str) -> bool:
        async with rt.pool.acquire() as conn:
            return await eventlog.exists(conn, routed_id(event_id))

    handler = make_handler(rules, routed_before=routed_before)
    incoming = Incoming(event=event, subject="s", deliveries=deliveries, _msg=None)  # type: ignore[arg-type]
    return [e async for out in handler(incoming) for e in out]


async def test_a_redelivered_webhook_is_not_routed_again_under_changed_rules(rt: Runtime) -> None:
    hook = _webhook()
    await rt.outbox.commit([hook])
    first = await _route(rt, BEFORE, hook, deliveries=1)
    await rt.outbox.commit(first)  # committed; then the ack was lost
    assert [type(e.data) for e in first] == [ev.WebhookRouted, ev.JobRequestedV2]

    again = await _route(rt, AFTER, hook, deliveries=2)

    assert again == []
    async with rt.pool.acquire() as conn:
        jobs = await conn.fetch("SELECT rule FROM jobs ORDER BY rule")
    assert [r["rule"] for r in jobs] == ["deploy"]


async def test_a_webhook_whose_routing_was_never_committed_is_routed_on_redelivery(
    rt: Runtime,
) -> None:
    hook = _webhook()
    await rt.outbox.commit([hook])  # its router died before committing anything

    again = await _route(rt, AFTER, hook, deliveries=2)

    assert [e.data.rule for e in again if isinstance(e.data, ev.JobRequestedV2)] == [
        "deploy", "notify",
    ]  # fmt: skip
