"""Endpoints with their state and health in the operator API, against real Postgres, NATS,
the dispatcher's real handler and an HTTP sink on loopback: a 410 shows the endpoint
disabled with why and since when and its last failure; enabling and disabling through the
API record the events `hookbus endpoints enable|disable` records, naming the token, and the
dispatcher follows them; a read token cannot change a thing; run-time endpoints show
paused with why. Every answer is checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.js.errors
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings
from hookbus_dispatcher import endpointstore

from .api_support import api_config
from .test_api import Api, _is_problem, served
from .test_dispatcher import Sink
from .test_endpoints_runtime import KEYRING
from .test_notify import _config, _deliver, _types

pytestmark = pytest.mark.integration


def _toml(sink: Sink) -> str:
    # The sink's URL with credentials and a query value, which the API never shows.
    url = sink.url.replace("http://", "http://user:pa55word@") + "?key=query-secret"
    return f"""
[dispatcher]
disable_after = 86400

[endpoints.billing]
url = "{url}"
allow_private = true
tenant = "acme"
events = ["push"]
secrets = [{{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}]
headers = {{ Authorization = "Bearer header-secret" }}
retry_schedule = [10, 10, 10, 10, 10]
"""


SECRETS = ("pa55word", "query-secret", "whsec_", "header-secret")


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path, sink: Sink) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path, _toml(sink))) as served_api:
        yield served_api


def _dispatcher(tmp_path: Path, sink: Sink) -> Any:
    """The dispatcher's config of the same endpoint (its own file)."""
    where = tmp_path / "dispatcher"
    where.mkdir()
    return _config(where, _toml(sink))


def _req(delivery_id: str) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="bill", webhook_id="evt_w", url="",
            endpoint="billing", tenant="acme", event_type="push",
        ),
        source="/test",
        tenant="acme",
    )  # fmt: skip


async def _post(api: Api, path: str, scope: str, body: Any = None) -> httpx.Response:
    async with api.client(scope) as c:
        r = await c.post(path, json=body) if body is not None else await c.post(path)
    if r.status_code == 200:
        await api.conforms(path, "post", r)
    return r


class Logged(msgspec.Struct, frozen=True):
    source: str
    subject: str | None
    tenant: str
    data: Any


async def _events(rt: Runtime, type_: str) -> list[Logged]:
    rows = await rt.pool.fetch(
        "SELECT source, subject, tenant, data::text AS data FROM events WHERE type = $1"
        " ORDER BY seq",
        type_,
    )
    return [
        Logged(r["source"], r["subject"], r["tenant"], ev.decode_data(type_, r["data"].encode()))
        for r in rows
    ]


async def _published(rt: Runtime, subject: str) -> ev.Event[Any]:
    """The last message on ``subject`` (published after the commit, or by the relay)."""
    for _ in range(200):
        try:
            msg = await rt.bus.js.get_last_msg(rt.bus.stream, subject)
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.05)
            continue
        return ev.decode(msg.data or b"")
    raise AssertionError(f"nothing was published on {subject}")


async def test_a_410_shows_disabled_and_enable_and_disable_through_the_api(
    api: Api, sink: Sink, tmp_path: Path
) -> None:
    rt = api.rt
    dconfig = _dispatcher(tmp_path, sink)
    before = await api.get("/api/endpoints/billing")
    assert before["state"] == "active"
    assert before["kind"] == "config"
    assert before["health"]["deliveries"]["attempts"] == 0
    assert before["health"]["last_success"] is None

    # A success, then a 410: the dispatcher disables it; what comes next dies unsent.
    sink.answer(200, 410)
    out, _ = await _deliver(rt, dconfig, _req("dlv_1"))
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    out, _ = await _deliver(rt, dconfig, _req("dlv_2"))
    assert _types(out) == ["DeliveryAttempted", "DeliveryFailed", "EndpointDisabled"]
    out, _ = await _deliver(rt, dconfig, _req("dlv_3"))
    assert _types(out) == ["DeliveryDead"]

    listed = await api.get("/api/endpoints")
    (ep,) = listed["items"]
    assert ep["name"] == "billing"
    assert ep["state"] == "disabled"
    assert ep["reason"] == "answered 410 Gone"
    assert ep["since"] is not None
    assert ep["changed_by"] is None  # the dispatcher did it
    assert ep["url"].startswith("http://***@127.0.0.1:")
    assert ep["url"].endswith("/hook?key=***")
    assert ep["signed"] is True
    assert ep["header_names"] == ["Authorization"]
    health = ep["health"]
    assert health["window_hours"] == 24
    assert health["deliveries"] == {
        "succeeded": 1, "failed": 1, "dead": 1, "attempts": 2, "failed_attempts": 1,
    }  # fmt: skip
    assert health["last_success"]["delivery_id"] == "dlv_1"
    assert health["last_success"]["status_code"] == 200
    assert health["last_failure"]["delivery_id"] == "dlv_2"
    assert health["last_failure"]["status_code"] == 410
    assert health["failing_since"] is None  # a 410 disables at once; no streak is kept
    assert not [s for s in SECRETS if s in str(listed)]
    assert await api.get("/api/endpoints/billing") == ep

    # A read token may look, not change; nothing is recorded for it.
    for verb in ("disable", "enable"):
        r = await _post(api, f"/api/endpoints/billing/{verb}", "read", {})
        _is_problem(r, 403, "forbidden")
    assert len(await _events(rt, ev.EndpointEnabled.TYPE)) == 0

    # Enabled by an operate token: recorded as the CLI records it, naming the token.
    r = await _post(api, "/api/endpoints/billing/enable", "operate", {"reason": "fixed it"})
    assert r.status_code == 200, r.text
    shown = r.json()
    assert (shown["state"], shown["reason"]) == ("active", "fixed it")
    assert shown["changed_by"] == "api:operate-bot"
    assert shown["since"] is not None
    (enabled,) = await _events(rt, ev.EndpointEnabled.TYPE)
    assert enabled.source == "/hookbus/api"
    assert enabled.subject == "billing"
    assert enabled.tenant == "acme"
    assert enabled.data == ev.EndpointEnabled(
        endpoint="billing", reason="fixed it", by="api:operate-bot", tenant="acme"
    )
    published = await _published(rt, f"{rt.settings.prefix}.endpoint.enabled.billing")
    assert published.data == enabled.data
    # The dispatcher sends to it again.
    sink.answer(200)
    out, _ = await _deliver(rt, dconfig, _req("dlv_4"))
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    again = await api.get("/api/endpoints/billing")
    assert again["health"]["deliveries"]["succeeded"] == 2
    assert again["health"]["last_success"]["delivery_id"] == "dlv_4"

    # Disabled by hand (no body: the reason says who); the dispatcher sends nothing more.
    async with api.client("operate") as c:
        r = await c.post("/api/endpoints/billing/disable")
    assert r.status_code == 200, r.text
    await api.conforms("/api/endpoints/billing/disable", "post", r)
    shown = r.json()
    assert shown["state"] == "disabled"
    assert shown["reason"] == "disabled by api:operate-bot"
    assert shown["changed_by"] == "api:operate-bot"
    (disabled_by_hand,) = [
        e for e in await _events(rt, ev.EndpointDisabled.TYPE) if e.data.by is not None
    ]
    assert disabled_by_hand.data.by == "api:operate-bot"
    sent = len(sink.received)
    out, _ = await _deliver(rt, dconfig, _req("dlv_5"))
    assert _types(out) == ["DeliveryDead"]
    assert len(sink.received) == sent


async def test_unknown_endpoints_and_bad_bodies(api: Api) -> None:
    async with api.client("operate") as c:
        for r in (
            await c.get("/api/endpoints/nope"),
            await c.post("/api/endpoints/nope/disable", json={}),
            await c.post("/api/endpoints/nope/enable", json={}),
        ):
            _is_problem(r, 404, "not_found")
        r = await c.post("/api/endpoints/billing/disable", json={"reason": 5})
        _is_problem(r, 400, "invalid")
        r = await c.post("/api/endpoints/billing/disable", json={"why": "x"})
        _is_problem(r, 400, "invalid")
    async with api.client(None) as c:
        _is_problem(await c.post("/api/endpoints/billing/disable", json={}), 401, "unauthorized")
    assert (await api.get("/api/endpoints/billing"))["state"] == "active"


async def test_run_time_endpoints_show_paused_with_why_and_never_their_secret(api: Api) -> None:
    rt = api.rt
    async with rt.pool.acquire() as conn:
        added, secret = await endpointstore.add(
            conn, rt.settings.prefix, name="crm", url="https://crm.example.com/in?t=tok-123",
            tenant="globex", events=["invoice.*"], description="CRM", by="ana", keyring=KEYRING,
        )  # fmt: skip
        await endpointstore.set_paused(
            conn, rt.settings.prefix, "crm", True, reason="their maintenance", by="ben"
        )
    listed = await api.get("/api/endpoints")
    assert [e["name"] for e in listed["items"]] == ["billing", "crm"]
    crm = listed["items"][1]
    assert crm["kind"] == "runtime"
    assert crm["endpoint_id"] == added.endpoint_id
    assert crm["url"] == "https://crm.example.com/in?t=***"
    assert (crm["tenant"], crm["events"], crm["description"]) == ("globex", ["invoice.*"], "CRM")
    assert (crm["state"], crm["reason"], crm["changed_by"]) == (
        "paused", "their maintenance", "ben",
    )  # fmt: skip
    assert crm["since"] is not None
    assert secret not in str(listed)
    assert "tok-123" not in str(listed)

    # Disabled while paused: disabled wins; enabled again, it is still paused.
    r = await _post(api, "/api/endpoints/crm/disable", "operate", {"reason": "spam"})
    assert (r.json()["state"], r.json()["reason"]) == ("disabled", "spam")
    r = await _post(api, "/api/endpoints/crm/enable", "operate", {})
    assert (r.json()["state"], r.json()["reason"]) == ("paused", "their maintenance")
