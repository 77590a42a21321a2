"""Overflow = "block": POST /api/v1/messages answers 429 (with Retry-After) for a tenant
whose backlog of deliveries not yet ended has reached its max_backlog, records nothing,
and takes the tenant's messages again once the backlog is below it; other tenants, and
tenants that spill (the default), are not refused. Real API, Postgres and NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from hookbus_api import tokens
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config, serve_api
from .test_api import Api

pytestmark = pytest.mark.integration

PATH = "/api/v1/messages"
TOML = """
[dispatcher.tenants.acme]
overflow = "block"
max_backlog = 2

[dispatcher.tenants.roomy]
overflow = "spill"
max_backlog = 1
"""


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Api]:
    config = api_config(settings, tmp_path, TOML)
    async with rt.pool.acquire() as conn:
        _, key = await tokens.create(conn, settings.prefix, name="s", scope="send", by="t")
    async with serve_api(config) as base:
        yield Api(base, config, rt, {"send": key})  # type: ignore[arg-type]


def _waiting(tenant: str, n: int) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_{tenant}_{n}", rule="r", webhook_id="w", url="",
            endpoint="billing", body=msgspec.Raw(b"{}"), tenant=tenant,
        ),
        source="/test",
        tenant=tenant,
    )  # fmt: skip


async def _send(api: Api, tenant: str) -> tuple[int, dict[str, str], dict[str, object]]:
    async with api.client("send") as c:
        r = await c.post(PATH, json={"tenant": tenant, "event_type": "e.x", "payload": {}})
    return r.status_code, dict(r.headers), r.json()


async def test_a_blocking_tenant_is_refused_at_its_bound_and_others_are_not(
    api: Api, rt: Runtime
) -> None:
    await rt.outbox.commit([_waiting("acme", 1)])
    status, _h, _b = await _send(api, "acme")
    assert status == 202  # one waiting, bound two

    await rt.outbox.commit([_waiting("acme", 2), _waiting("roomy", 1), _waiting("roomy", 2)])
    before = await rt.pool.fetchval("SELECT count(*) FROM events")
    status, headers, body = await _send(api, "acme")
    assert status == 429
    assert headers["retry-after"] == "5"
    assert headers["content-type"].startswith("application/problem+json")
    assert body["code"] == "too_many"
    assert "max_backlog 2" in str(body["detail"])
    assert await rt.pool.fetchval("SELECT count(*) FROM events") == before  # nothing recorded

    # Spilling tenants and tenants without a section are taken whatever waits.
    assert (await _send(api, "roomy"))[0] == 202
    assert (await _send(api, "other"))[0] == 202

    # One of acme's deliveries ends: below the bound again.
    done = ev.make_event(
        ev.DeliverySucceeded(delivery_id="dlv_acme_1", url="", tenant="acme", status_code=200),
        source="/test",
        tenant="acme",
    )
    await rt.outbox.commit([done])
    assert (await _send(api, "acme"))[0] == 202
