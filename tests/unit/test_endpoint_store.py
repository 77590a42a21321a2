"""Run-time endpoints without I/O: what the store accepts, the secrets it makes, how an
endpoint resolves for sending (signed with every live secret), the send-time cache, how
fan-out derives its deliveries, and the router's ``endpoints = "subscribed"`` action."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_dispatcher import endpointstore, fanout
from hookbus_dispatcher.endpointstore import BadEndpoint, Resolved, RuntimeEndpoint, Store
from hookbus_dispatcher.verify import decode_secret, verify
from hookbus_router.config import RouterConfig, Rule, WebhookAction, check
from hookbus_router.routing import route


@pytest.mark.parametrize("name", ["billing", "a.b-c_d", "x" * 64])
def test_good_names(name: str) -> None:
    assert endpointstore.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x" * 65, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(BadEndpoint, match="name"):
        endpointstore.check_name(name)


@pytest.mark.parametrize(
    "url",
    ["ftp://x.example.com", "x.example.com/hook", "http://", "https://user:pw@x.example.com/"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadEndpoint, match="url"):
        endpointstore.check_url(url)


def test_events_globs() -> None:
    assert endpointstore.check_events([" invoice.* ", "order.paid"]) == ["invoice.*", "order.paid"]
    for bad in ([], [" "], ["a b"], ["x"] * 51):
        with pytest.raises(BadEndpoint, match="events"):
            endpointstore.check_events(bad)
    assert endpointstore.takes(["invoice.*"], "invoice.paid")
    assert not endpointstore.takes(["invoice.*"], "order.paid")


def test_new_secrets_are_standard_webhooks_secrets_and_differ() -> None:
    a, b = endpointstore.new_secret(), endpointstore.new_secret()
    assert a.startswith("whsec_")
    assert len(decode_secret(a)) == 24
    assert a != b


def _row(**kw: Any) -> RuntimeEndpoint:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "name": "billing", "endpoint_id": "ep_1", "tenant": "acme",
        "url": "https://b.example.com/in", "events": ["invoice.*"], "created_at": now,
        "updated_at": now, **kw,
    }  # fmt: skip
    return RuntimeEndpoint(**fields)


def test_a_resolved_endpoint_signs_with_every_live_secret() -> None:
    old, new = endpointstore.new_secret(), endpointstore.new_secret()
    r = endpointstore.resolved(_row(paused=True), [new, old])
    assert r.paused
    assert (r.endpoint.url, r.endpoint.tenant, r.endpoint.events) == (
        "https://b.example.com/in", "acme", ["invoice.*"],
    )  # fmt: skip
    signer = r.endpoint.signer()
    assert signer is not None
    headers = signer.headers("msg_1", 1_700_000_000, b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        assert verify(secret, headers, b"{}", now=1_700_000_000) == "msg_1"
    assert "whsec" not in repr(r)  # secrets never reach a log through a repr


class _CountingStore(Store):
    def __init__(self, ttl: float) -> None:
        self.t = 0.0
        super().__init__(None, ttl=ttl, clock=lambda: self.t)  # type: ignore[arg-type]
        self.loads = 0

    async def _load(self, name: str) -> Resolved | None:
        self.loads += 1
        return endpointstore.resolved(_row(name=name), [])


async def test_the_store_reads_again_after_its_ttl_or_when_asked_fresh() -> None:
    store = _CountingStore(ttl=5.0)
    await store.get("billing")
    store.t = 4.9
    await store.get("billing")
    assert store.loads == 1
    await store.get("billing", fresh=True)
    assert store.loads == 2
    store.t = 10.0
    await store.get("billing")
    assert store.loads == 3
    none = _CountingStore(ttl=0)
    await none.get("a")
    await none.get("a")
    assert none.loads == 2


def _message(**kw: Any) -> ev.Event[ev.MessageSubmitted]:
    data = ev.MessageSubmitted(
        message_id="msg_1", event_type="invoice.paid", payload=msgspec.Raw(b'{"a":1}'),
        tenant="acme", **kw,
    )  # fmt: skip
    return ev.make_event(data, source="/test", id="evt_m", tenant="acme")


def test_fanout_derives_one_delivery_per_endpoint_and_a_record() -> None:
    event = _message()
    out = fanout.requests(event, ["crm", "ledger"])
    again = fanout.requests(event, ["crm", "ledger"])
    assert [e.id for e in out] == [e.id for e in again]  # a redelivery derives the same
    *reqs, done = out
    assert [r.data.endpoint for r in reqs] == ["crm", "ledger"]
    assert [r.data.delivery_id for r in reqs] == [
        fanout.delivery_id("evt_m", "crm"), fanout.delivery_id("evt_m", "ledger"),
    ]  # fmt: skip
    assert len({r.data.delivery_id for r in reqs}) == 2
    for r in reqs:
        assert r.causationid == "evt_m"
        assert (r.data.message_id, r.data.event_type, r.data.tenant) == (
            "msg_1", "invoice.paid", "acme",
        )  # fmt: skip
        assert bytes(r.data.body) == b'{"a":1}'
        assert r.data.rule == fanout.FANOUT_RULE
        assert r.data.url == ""
    assert done.id == ev.derived_id("evt_m", "outcome")  # the consume loop's terminal step
    assert isinstance(done.data, ev.MessageDispatched)
    assert done.data.delivery_ids == [r.data.delivery_id for r in reqs]
    # Another message's deliveries to the same endpoint are other deliveries.
    assert fanout.delivery_id("evt_other", "crm") != fanout.delivery_id("evt_m", "crm")
    (only,) = fanout.requests(event, [])
    assert isinstance(only.data, ev.MessageDispatched)


def test_a_rule_submitted_message_names_its_rule_and_webhook() -> None:
    (req, _) = fanout.requests(_message(rule="r", webhook_id="evt_w"), ["crm"])
    assert (req.data.rule, req.data.webhook_id) == ("r", "evt_w")


def _hook() -> ev.Event[ev.WebhookReceived]:
    return ev.make_event(
        ev.WebhookReceived(
            source="github", kind="github", event_type="push", payload=msgspec.Raw(b'{"x":1}')
        ),
        source="/test", tenant="acme",
    )  # fmt: skip


def test_a_subscribed_webhook_action_submits_a_message() -> None:
    rule = Rule(name="fan", actions=[WebhookAction(endpoints="subscribed")])
    hook = _hook()
    routed, submitted = route([rule], hook)
    assert isinstance(submitted.data, ev.MessageSubmitted)
    assert routed.data.requested == [submitted.id]
    m = submitted.data
    assert (m.tenant, m.event_type, m.rule, m.webhook_id) == ("acme", "push", "fan", hook.id)
    assert bytes(m.payload) == b'{"x":1}'
    assert m.message_id == route([rule], hook)[1].data.message_id  # derived, not random


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        (WebhookAction(), "exactly one of url and endpoint"),
        (WebhookAction(url="https://x", endpoints="subscribed"), "exactly one"),
        (WebhookAction(endpoints="subscribed", headers={"a": "b"}), "no method or headers"),
    ],
)
def test_subscribed_webhook_actions_are_checked(action: WebhookAction, problem: str) -> None:
    config = RouterConfig(rules=[Rule(name="r", actions=[action])])
    with pytest.raises(ConfigError, match=problem):
        check(config)


def test_a_message_ordering_key_goes_on_each_of_its_deliveries() -> None:
    reqs = fanout.requests(_message(ordering_key="cus_1"), ["crm", "ledger"])[:-1]
    assert [r.data.ordering_key for r in reqs] == ["cus_1", "cus_1"]
    assert fanout.requests(_message(), ["crm"])[0].data.ordering_key is None
