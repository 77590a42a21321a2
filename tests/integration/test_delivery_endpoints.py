"""Endpoints and the destination guard end to end: the dispatcher's config loaded from a
real file, its clients built as its main() builds them, real HTTP to a sink on loopback,
real Postgres for the log. No traffic leaves loopback: the refused cases never connect."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.service import Runtime
from hookbus_dispatcher import config as dispatcher
from hookbus_dispatcher import retryafter, schedule
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.ssrf import REFUSED, open_clients

from .test_dispatcher import BODY, Sink, _NoMsg, _outcomes, _status

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_" + "bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbg=="


def _config(tmp_path: Path, text: str) -> dispatcher.DispatcherConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return dispatcher.load(path, {"BILLING_WHSEC": SECRET, "BILLING_NEW": NEW})


def _request(
    url: str = "", endpoint: str | None = None, delivery_id: str = "dlv_e"
) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="notify", webhook_id="evt_w", url=url,
            headers={"content-type": "application/json"}, body=msgspec.Raw(BODY),
            endpoint=endpoint, event_type="push",
        ),
        source="/test",
    )  # fmt: skip


async def _deliver(
    rt: Runtime,
    config: dispatcher.DispatcherConfig,
    req: ev.Event[Any],
    at: datetime | None = None,
) -> tuple[list[ev.Event[Any]], datetime | None]:
    """One delivery through the handler (its clock saying ``at``), with the clients
    main() builds from ``config``; each yielded batch committed as the consume loop
    would. Returns the events and when the next attempt is due, if one is."""
    await rt.outbox.commit([req])
    await rt.pool.execute("DELETE FROM delivery_schedule")
    d = config.dispatcher
    out: list[ev.Event[Any]] = []
    async with open_clients(d.networks(), d.timeout_seconds) as (client, private):
        handler = make_handler(
            client,
            rt.pool,
            d.attempts(),
            endpoints=config.endpoints,
            private_client=private,
            retry_schedule=d.retry_schedule,
            clock=(lambda: at) if at else retryafter.utcnow,
        )
        incoming = Incoming(event=req, subject="s", deliveries=1, _msg=_NoMsg())  # type: ignore[arg-type]
        async for item in handler(incoming):
            batch = [item] if isinstance(item, ev.Event) else list(item)
            await rt.outbox.commit_and_publish(batch)
            out.extend(batch)
    return out, await schedule.next_due(rt.pool, req.data.delivery_id)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _localhost(sink: Sink) -> str:
    # `localhost` resolves to 127.0.0.1 here (and in CI): the guard sees the address.
    return sink.url.replace("127.0.0.1", "localhost")


async def test_localhost_is_refused_without_the_allow_list(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, "")
    before = REFUSED.labels("loopback")._value.get()
    out, due = await _deliver(rt, config, _request(_localhost(sink)))
    assert due is None  # refused for good: not retried
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliveryFailed]
    error = out[0].data.error
    assert error is not None
    assert "localhost resolves to 127.0.0.1 (loopback)" in error
    assert "dispatcher.allow_networks" in error
    assert sink.received == []  # never connected
    assert await _status(rt, "dlv_e") == ("failed", 1, None)
    assert REFUSED.labels("loopback")._value.get() == before + 1


async def test_localhost_is_delivered_with_the_allow_list(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, '[dispatcher]\nallow_networks = ["127.0.0.0/8"]\n')
    sink.answer(200)
    out, due = await _deliver(rt, config, _request(_localhost(sink)))
    assert due is None
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    (got,) = sink.received
    assert got.body == BODY
    assert got.headers["host"].startswith("localhost:")  # the name, not the address


async def test_an_endpoint_delivery_is_signed_and_verifies_with_the_reference_library(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(
        tmp_path,
        f"""
[endpoints.billing]
url = "{_localhost(sink)}"
secrets = [{{ env = "BILLING_WHSEC" }}, {{ env = "BILLING_NEW" }}]
headers = {{ x-team = "billing" }}
allow_private = true
""",
    )
    sink.answer((503, {"retry-after": "0"}), 200)
    sink.reply_body = b'{"error": "busy"}'
    req = _request(endpoint="billing")
    out, due = await _deliver(rt, config, req)
    assert due is not None
    assert out[0].data.response_body == '{"error": "busy"}'
    assert (out[0].data.endpoint, out[0].data.url) == ("billing", _localhost(sink))
    out, due = await _deliver(rt, config, req)  # due at once: Retry-After 0
    assert due is None
    assert await _outcomes(rt, req) == [
        ("attempted", 1, 503),
        ("attempted", 2, 200),
        ("succeeded", 2, 200),
    ]
    first, second = sink.received
    for got in (first, second):
        assert got.headers["x-team"] == "billing"
        # Either secret verifies what was sent, byte for byte (mid-rotation).
        for secret in (SECRET, NEW):
            Webhook(secret).verify(got.body, got.headers)
    # One message id across attempts: the delivery id.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "dlv_e"
    # The secrets are nowhere in the log.
    async with rt.pool.acquire() as conn:
        logged = await conn.fetchval("SELECT string_agg(data::text, ' ') FROM events")
    assert SECRET.removeprefix("whsec_") not in logged
    assert NEW.removeprefix("whsec_") not in logged


async def test_allow_private_on_one_endpoint_does_not_open_the_address_to_url_actions(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, f'[endpoints.local]\nurl = "{sink.url}"\nallow_private = true\n')
    out, _ = await _deliver(rt, config, _request(endpoint="local", delivery_id="dlv_1"))
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliverySucceeded]
    out, _ = await _deliver(rt, config, _request(url=sink.url, delivery_id="dlv_2"))
    assert [type(e.data) for e in out] == [ev.DeliveryAttempted, ev.DeliveryFailed]
    assert "(loopback)" in (out[0].data.error or "")
    assert len(sink.received) == 1
