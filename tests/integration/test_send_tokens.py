"""Send tokens bound to tenants, against the operator API served by uvicorn on real
Postgres and NATS: made with `hookbus tokens create --tenant`, shown by `tokens list` and
GET /api/tokens, named in the token-created event (never the token), and refused with a
403 naming the tenant when they send a message for another tenant."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from hookbus_api import tokens
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config
from .serving import run_cli
from .test_api import Api, _is_problem, served

pytestmark = pytest.mark.integration

PATH = "/api/v1/messages"

BODY = {"event_type": "invoice.paid", "payload": {"id": "in_1"}}


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path)) as served_api:
        yield served_api


def _cli_config(api: Api, tmp_path: Path) -> Path:
    config = tmp_path / "cli.toml"
    config.write_text(
        f'prefix = "{api.config.prefix}"\n[database]\nurl = "{api.config.database.url}"\n'
        f'schema = "{api.config.database.schema}"\n'
    )
    return config


async def _post(api: Api, key: str, tenant: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        return await c.post(
            PATH, json={**BODY, "tenant": tenant}, headers={"authorization": f"Bearer {key}"}
        )


async def _messages(api: Api) -> int:
    return int(
        await api.rt.pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'io.hookbus.message.submitted.v1'"
        )
    )


async def test_a_bound_send_token_sends_for_its_tenants_and_is_refused_for_others(
    api: Api,
) -> None:
    async with api.rt.pool.acquire() as conn:
        _, key = await tokens.create(
            conn, api.config.prefix, name="shop", scope="send", by="t", tenants=["acme", "beta"]
        )
    for tenant in ("acme", "beta"):
        r = await _post(api, key, tenant)
        assert r.status_code == 202, r.text
        assert r.json()["tenant"] == tenant
    before = await _messages(api)
    problem = _is_problem(await _post(api, key, "gamma"), 403, "forbidden")
    assert "'gamma'" in problem["detail"]
    assert "acme, beta" in problem["detail"]
    assert await _messages(api) == before  # nothing recorded
    # The default tenant is a tenant like any other.
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        r = await c.post(PATH, json=BODY, headers={"authorization": f"Bearer {key}"})
    assert "'default'" in _is_problem(r, 403, "forbidden")["detail"]
    # An unbound send token (and operate, admin) keeps sending for every tenant.
    for scope in ("send", "operate", "admin"):
        assert (await _post(api, api.keys[scope], "gamma")).status_code == 202
    assert await _messages(api) == before + 3
    # Bound or not, a send token still sees nothing.
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        seen = await c.get("/api/events", headers={"authorization": f"Bearer {key}"})
    _is_problem(seen, 403, "forbidden")


async def test_the_cli_binds_a_send_token_and_shows_its_tenants(api: Api, tmp_path: Path) -> None:
    config = _cli_config(api, tmp_path)
    code, out, err = await run_cli(
        config, "tokens", "create", "shop", "--scope", "send",
        "--tenant", "acme", "--tenant", "beta", "--by", "root",
    )  # fmt: skip
    assert code == 0, err
    assert "tenants acme, beta" in out
    assert "every tenant" not in out
    (key,) = re.findall(r"hbk_[A-Za-z0-9_-]{43}", out)
    assert (await _post(api, key, "beta")).status_code == 202
    _is_problem(await _post(api, key, "gamma"), 403, "forbidden")

    code, out, _ = await run_cli(config, "tokens", "list")
    (line,) = [x for x in out.splitlines() if " shop " in x]
    assert line.endswith("tenants acme,beta")
    (unbound,) = [x for x in out.splitlines() if " send-bot " in x]
    assert unbound.endswith("tenants all")
    code, out, _ = await run_cli(config, "tokens", "list", "--json")
    listed = [msgspec.json.decode(x) for x in out.splitlines()]
    assert [t["tenants"] for t in listed if t["name"] == "shop"] == [["acme", "beta"]]
    got = await api.get("/api/tokens", "admin")
    assert [t["tenants"] for t in got["items"] if t["name"] == "shop"] == [["acme", "beta"]]

    # The event names the tenants, never the token.
    row = await api.rt.pool.fetchrow(
        "SELECT data::text AS data FROM events WHERE type = $1 AND data->>'name' = 'shop'",
        ev.ApiTokenCreated.TYPE,
    )
    created = msgspec.json.decode(row["data"], type=ev.ApiTokenCreated)
    assert (created.scope, created.tenants, created.by) == ("send", ["acme", "beta"], "root")
    assert key not in row["data"]
    assert key[4:20] not in row["data"]

    # An unbound send token is made with a note saying it sends for every tenant.
    code, out, err = await run_cli(config, "tokens", "create", "--name", "app", "--scope", "send")
    assert code == 0, err
    assert "sends messages for every tenant" in out
    code, _, err = await run_cli(config, "tokens", "create", "--scope", "send")
    assert code == 2
    assert "give the token a NAME" in err
    # Only send tokens are bound.
    code, _, err = await run_cli(
        config, "tokens", "create", "--name", "ro", "--scope", "read", "--tenant", "acme"
    )
    assert code == 1
    assert "only send tokens are bound to tenants" in err
    assert await api.rt.pool.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'ro'") == 0
