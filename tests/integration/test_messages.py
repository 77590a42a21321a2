"""POST /api/v1/messages on the operator API served by uvicorn, against real Postgres and
NATS: who may send, what is recorded before the answer, idempotency keys, the problems
bad input gets, and the dispatcher delivering what was sent (sink on loopback); and
`hookbus send` as a process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config
from .test_api import Api, _is_problem, served
from .test_cli import hookbus
from .test_dispatcher import Sink
from .test_endpoints_runtime import _env, add, dispatcher, received

pytestmark = pytest.mark.integration

PATH = "/api/v1/messages"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path)) as served_api:
        yield served_api


async def _post(api: Api, body: Any, scope: str | None = "send") -> httpx.Response:
    async with api.client(scope) as c:
        if isinstance(body, bytes):
            return await c.post(PATH, content=body, headers={"content-type": "application/json"})
        return await c.post(PATH, json=body)


async def _submitted(rt: Runtime, message_id: str) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch(
        "SELECT data::text AS data FROM events WHERE type = 'io.hookbus.message.submitted.v1'"
        " AND data->>'message_id' = $1",
        message_id,
    )
    return [json.loads(r["data"]) for r in rows]


async def test_a_sent_message_is_recorded_before_the_202_and_delivered(
    api: Api, rt: Runtime, sink: Sink
) -> None:
    secret = await add(api.rt, "billing", sink.url, tenant="acme", events=["invoice.*"])
    body = {"tenant": "acme", "event_type": "invoice.paid", "payload": {"id": "in_1"},
            "ordering_key": "cus_1"}  # fmt: skip
    r = await _post(api, body)
    assert r.status_code == 202, r.text
    await api.conforms(PATH, "post", r)
    answer = r.json()
    assert answer["id"].startswith("msg_")
    assert answer["duplicate"] is False
    # In the log when the answer came, whoever sent it, with the ordering key.
    (recorded,) = await _submitted(rt, answer["id"])
    assert recorded["payload"] == {"id": "in_1"}
    assert recorded["ordering_key"] == "cus_1"
    assert recorded["submitted_by"] == "api:send-bot"
    async with dispatcher(rt):
        (got,) = await received(sink, 1)
    assert Webhook(secret).verify(got.body, got.headers) == {"id": "in_1"}
    assert got.headers["webhook-id"] == answer["id"]


async def test_the_same_idempotency_key_is_one_message(api: Api, rt: Runtime) -> None:
    body = {"event_type": "invoice.paid", "payload": {"n": 1}, "idempotency_key": "k-1"}
    first = await _post(api, body)
    assert first.status_code == 202, first.text
    again = await _post(api, {**body, "payload": {"n": 2}}, scope="operate")
    assert again.status_code == 200, again.text
    await api.conforms(PATH, "post", again)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["duplicate"] is True
    assert [m["payload"] for m in await _submitted(rt, first.json()["id"])] == [{"n": 1}]
    # The key is the tenant's: another tenant's same key is another message.
    other = await _post(api, {**body, "tenant": "beta"})
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "event_type"),
        ({"event_type": "invoice.paid"}, "payload"),
        ({"event_type": "invoice paid", "payload": {}}, "event_type"),
        ({"event_type": "x", "payload": {}, "tenant": "a/b"}, "tenant"),
        ({"event_type": "x", "payload": {}, "tenant": 7}, "tenant"),
        ({"event_type": "x", "payload": {}, "idempotency_key": "has space"}, "idempotency_key"),
        ({"event_type": "x", "payload": {}, "ordering_key": ""}, "ordering_key"),
        ({"event_type": "x", "payload": {}, "colour": "red"}, "colour"),
        (b"{not json", "body"),
    ],
)
async def test_bad_input_gets_a_problem_naming_the_field(
    api: Api, rt: Runtime, body: Any, field: str
) -> None:
    before = await rt.pool.fetchval("SELECT count(*) FROM events")
    problem = _is_problem(await _post(api, body), 400, "invalid")
    assert field in problem["detail"]
    assert await rt.pool.fetchval("SELECT count(*) FROM events") == before


async def test_only_send_operate_and_admin_tokens_send(api: Api) -> None:
    body = {"event_type": "x", "payload": {}}
    _is_problem(await _post(api, body, scope="read"), 403, "forbidden")
    _is_problem(await _post(api, body, scope=None), 401, "unauthorized")
    for scope in ("send", "operate", "admin"):
        assert (await _post(api, body, scope=scope)).status_code == 202
    # A send token sends and sees nothing.
    async with api.client("send") as c:
        _is_problem(await c.get("/api/events"), 403, "forbidden")


def test_hookbus_send_records_a_message(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "hookbus.toml").write_text("")

    def send(*argv: str) -> Any:
        out = hookbus("-c", str(tmp_path / "hookbus.toml"), "send", *argv, env=_env(rt),
                      cwd=tmp_path)  # fmt: skip
        return out

    ok = send("--tenant", "acme", "--type", "invoice.paid", "--data", '{"id": 1}',
              "--idempotency-key", "k", "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    first = json.loads(ok.stdout)
    again = send("--tenant", "acme", "--type", "invoice.paid", "--data", '{"id": 1}',
                 "--idempotency-key", "k", "--json")  # fmt: skip
    assert json.loads(again.stdout)["id"] == first["id"]
    assert json.loads(again.stdout)["duplicate"] is True
    bad = send("--type", "invoice.paid", "--data", "{nope")
    assert bad.returncode == 2
    assert "--data: not JSON" in bad.stderr
