"""Fan-out to a tenant's endpoints, end to end: a message (and a rule's webhook action
with ``endpoints = "subscribed"``) reaches every endpoint of its tenant subscribed to its
event type, configured and run-time alike, once each; another tenant's endpoints, and
endpoints of other event types or disabled, get nothing; a redelivered message adds
nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from hookbus_cli.embedded import free_port
from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import Secret
from hookbus_dispatcher import endpointstore
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.fanout import delivery_id, with_fanout
from hookbus_router.config import Rule, WebhookAction
from hookbus_router.routing import route

from .test_cli import clean_env
from .test_dispatcher import Sink, _NoMsg, _status, _until
from .test_endpoints_runtime import KEY, add, dispatcher, received, send

pytestmark = pytest.mark.integration

CONFIG_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _configured(sink: Sink) -> dict[str, Endpoint]:
    return {
        "ledger": Endpoint(
            url=f"{sink.url}/ledger", tenant="acme", events=["invoice.*"],
            secrets=[Secret(value=CONFIG_SECRET)],
        ),
        "beta-ledger": Endpoint(url=f"{sink.url}/beta", tenant="beta", events=["*"]),
    }  # fmt: skip


async def _setup(rt: Runtime, sink: Sink) -> str:
    secret = await add(rt, "crm", f"{sink.url}/crm", tenant="acme", events=["invoice.paid"])
    await add(rt, "shipping", f"{sink.url}/ship", tenant="acme", events=["order.*"])
    await add(rt, "gone", f"{sink.url}/gone", tenant="acme", events=["*"])
    await add(rt, "beta-crm", f"{sink.url}/beta-crm", tenant="beta", events=["*"])
    # A disabled endpoint of the tenant gets nothing either.
    async with rt.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO endpoint_state (endpoint, disabled, reason, changed_at, last_seq)"
            " VALUES ('gone', true, 'answered 410 Gone', now(), 0)"
        )
    return secret


async def test_a_message_reaches_each_subscribed_endpoint_of_its_tenant_once(
    rt: Runtime, sink: Sink
) -> None:
    secret = await _setup(rt, sink)
    configured = _configured(sink)
    async with dispatcher(rt, configured):
        accepted = await send(rt, "invoice.paid", {"id": "in_1"}, tenant="acme")
        got = await received(sink, 2)

        async def settled() -> bool:
            for name in ("crm", "ledger"):
                if (await _status(rt, delivery_id(accepted.event_id, name)))[0] != "succeeded":
                    return False
            return True

        await _until(settled)
    by_path = {r.path: r for r in got}
    assert sorted(by_path) == ["/hook/crm", "/hook/ledger"]
    assert Webhook(secret).verify(by_path["/hook/crm"].body, by_path["/hook/crm"].headers)
    ledger = by_path["/hook/ledger"]
    assert Webhook(CONFIG_SECRET).verify(ledger.body, ledger.headers) == {"id": "in_1"}
    assert {r.headers["webhook-id"] for r in got} == {accepted.id}
    (dispatched,) = await rt.pool.fetch(
        "SELECT data::text AS data FROM events WHERE type = 'io.hookbus.message.dispatched.v1'"
    )
    data = msgspec.json.decode(dispatched["data"])
    assert data["endpoints"] == ["crm", "ledger"]

    # The message again (a redelivery): nothing new is recorded, nothing is sent.
    async with rt.pool.acquire() as conn:
        logged = await eventlog.chain(conn, accepted.event_id)
    event = ev.decode(next(e for e in logged if e.event.id == accepted.event_id).payload())
    count = await rt.pool.fetchval("SELECT count(*) FROM events")
    handler = with_fanout(_never, rt.pool, configured)
    incoming = Incoming(event=event, subject="s", deliveries=2, _msg=_NoMsg())  # type: ignore[arg-type]
    async for batch in handler(incoming):
        items = [batch] if isinstance(batch, ev.Event) else list(batch)
        inserted, _ = await rt.outbox.commit(items)
        assert inserted == []
    assert await rt.pool.fetchval("SELECT count(*) FROM events") == count
    assert len(sink.received) == 2


async def _never(incoming: Incoming) -> AsyncIterator[Yielded]:
    raise AssertionError(f"{incoming.event.type} went to the delivery handler")
    yield []  # type: ignore[unreachable]


async def test_a_rule_with_endpoints_subscribed_fans_out_the_webhook(
    rt: Runtime, sink: Sink
) -> None:
    secret = await _setup(rt, sink)
    rule = Rule(name="to-subscribers", actions=[WebhookAction(endpoints="subscribed")])
    hook = ev.make_event(
        ev.WebhookReceived(
            source="billing", kind="generic", event_type="invoice.paid",
            payload=msgspec.Raw(b'{"id": "in_9"}'),
        ),
        source="/test", tenant="acme",
    )  # fmt: skip
    routed = route([rule], hook)
    submitted = [e for e in routed if isinstance(e.data, ev.MessageSubmitted)]
    assert len(submitted) == 1
    assert submitted[0].data.tenant == "acme"
    async with dispatcher(rt, _configured(sink)):
        await rt.outbox.commit_and_publish([hook, *routed])
        got = await received(sink, 2)
    assert sorted(r.path for r in got) == ["/hook/crm", "/hook/ledger"]
    crm = next(r for r in got if r.path == "/hook/crm")
    assert Webhook(secret).verify(crm.body, crm.headers) == {"id": "in_9"}
    assert (
        await rt.pool.fetchval(
            "SELECT rule FROM deliveries WHERE delivery_id = $1",
            delivery_id(submitted[0].id, "crm"),
        )
        == "to-subscribers"
    )


async def test_no_subscribed_endpoint_is_recorded_as_dispatched_to_none(
    rt: Runtime, sink: Sink
) -> None:
    await _setup(rt, sink)
    async with rt.pool.acquire() as conn:
        names = await endpointstore.subscribed(conn, _configured(sink), "acme", "refund.made")
    assert names == []
    async with dispatcher(rt, _configured(sink)):
        accepted = await send(rt, "refund.made", {}, tenant="acme")

        async def dispatched() -> bool:
            return bool(
                await rt.pool.fetchval(
                    "SELECT 1 FROM events WHERE type = 'io.hookbus.message.dispatched.v1'"
                    " AND data->>'message_id' = $1 AND data->>'endpoints' = '[]'",
                    accepted.id,
                )
            )

        await _until(dispatched)
    assert sink.received == []


async def test_the_dispatcher_process_fans_out_to_run_time_endpoints(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    """`hookbus-dispatcher` as its own process, wired by its main(): fan-out, fairness,
    limits and ordering in front of the delivery handler."""
    secret = await add(rt, "crm", f"{sink.url}/crm", tenant="acme", events=["invoice.*"])
    s = rt.settings
    config = tmp_path / "hookbus.toml"
    config.write_text(
        f'prefix = "{s.prefix}"\n[nats]\nurl = "{s.nats.url}"\n'
        f'[database]\nurl = "{s.database.url}"\nschema = "{s.database.schema}"\n'
        f'[dispatcher]\nhealth_port = {free_port()}\nallow_networks = ["127.0.0.0/8"]\n'
        "endpoint_cache_seconds = 0\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus_dispatcher", "--config", str(config),
        env=clean_env(HOOKBUS_SECRETS_KEY=KEY),  # it opens the endpoint's sealed secret
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        accepted = await send(rt, "invoice.paid", {"id": "in_7"}, tenant="acme", key="k7")
        (got,) = await received(sink, 1)
        assert got.path == "/hook/crm"
        assert Webhook(secret).verify(got.body, got.headers) == {"id": "in_7"}

        async def settled() -> bool:
            status = await _status(rt, delivery_id(accepted.event_id, "crm"))
            return status[0] == "succeeded"

        await _until(settled)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
