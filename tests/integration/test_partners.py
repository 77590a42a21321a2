"""Partners over real HTTP and the real CLI, recording into a real Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_receiver import partnerstore as store
from hookbus_receiver.config import ReceiverConfig

from .serving import run_cli, serve, write_config

pytestmark = pytest.mark.integration

ORDER = json.dumps({"order": {"id": "A-1", "total": 12.5}}).encode()
JSON = {"content-type": "application/json"}


@pytest.fixture
async def conn(url: str, receiver_settings: ReceiverConfig) -> AsyncIterator[asyncpg.Connection]:
    async with (
        open_pool(receiver_settings.database, run_migrations=False) as pool,
        pool.acquire() as c,
    ):
        yield c


@pytest.fixture
def config(receiver_settings: ReceiverConfig, tmp_path: Path) -> Path:
    return write_config(receiver_settings, tmp_path / "hookbus.toml")


async def post(url: str, token: str, body: bytes = ORDER, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{url}/webhook/v1/{token}", content=body, headers={**JSON, **headers}
        )


async def received(conn: asyncpg.Connection) -> list[eventlog.LoggedEvent]:
    rows = await eventlog.recent(conn, limit=500)
    return [r for r in rows if r.event.type == ev.WebhookReceived.TYPE]


def token_in(guide: str) -> str:
    m = re.search(r"/webhook/v1/([A-Za-z0-9_-]+)", guide)
    assert m, guide
    return m[1]


async def test_lifecycle_with_the_cli_and_http(
    url: str, config: Path, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    code, guide, _ = await run_cli(config, "partners", "add", "acme", "--description", "Acme Inc",
                                   "--tenant", "acme", "--require", "order.id")  # fmt: skip
    assert code == 0
    token = token_in(guide)
    assert f"{url}/webhook/v1/{token}" in guide  # their URL, on this receiver
    assert "curl -i -X POST" in guide
    assert "required fields: order.id" in guide
    partner = await store.get(conn, "acme")

    r = await post(url, token)
    assert r.status_code == 202
    [row] = await received(conn)
    assert row.event.id == r.json()["id"]
    assert (row.event.source, row.event.tenant) == (
        f"/hookbus/receiver/partners/{partner.partner_id}",
        "acme",
    )
    data = msgspec.json.decode(row.event.data, type=ev.WebhookReceived)
    assert (data.source, data.kind, data.event_type, data.sender) == (
        partner.partner_id, "partner", "webhook", "acme",
    )  # fmt: skip
    assert (
        row.bus_subject
        == f"{receiver_settings.prefix}.webhook.received.{partner.partner_id}.webhook"
    )
    assert await eventlog.raw_body(conn, row.event.id) == ORDER

    assert (await run_cli(config, "partners", "suspend", "acme"))[0] == 0
    assert (await post(url, token)).status_code == 404
    assert (await run_cli(config, "partners", "activate", partner.partner_id))[0] == 0
    assert (await post(url, token)).status_code == 202

    code, guide2, _ = await run_cli(config, "partners", "rotate", "acme")
    assert code == 0
    new_token = token_in(guide2)
    assert new_token != token
    assert (await post(url, token)).status_code == 404
    assert (await post(url, new_token)).status_code == 202

    code, listing, _ = await run_cli(config, "partners", "list")
    assert partner.partner_id in listing
    assert "ACTIVE" in listing
    code, shown, _ = await run_cli(config, "partners", "show", "acme")
    assert "Acme Inc" in shown
    assert new_token not in shown

    assert (await run_cli(config, "partners", "delete", "acme"))[0] == 0
    assert (await post(url, new_token)).status_code == 404
    assert (await run_cli(config, "partners", "list"))[1].strip() == "no partners"
    assert "DELETED" in (await run_cli(config, "partners", "list", "--all"))[1]
    code, _, err = await run_cli(config, "partners", "show", "acme")
    assert code == 1
    assert "no partner 'acme'" in err

    types = [r.event.type for r in await eventlog.recent(conn, limit=500)]
    assert [t for t in types if ".partner." in t] == [
        "io.hookbus.partner.created.v1",
        "io.hookbus.partner.status.changed.v1",
        "io.hookbus.partner.status.changed.v1",
        "io.hookbus.partner.rotated.v1",
        "io.hookbus.partner.deleted.v1",
    ]
    assert len(await received(conn)) == 3


async def test_validation_failures_are_422_with_the_reason_and_record_nothing(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    schema = {
        "type": "object",
        "properties": {"order": {"type": "object", "properties": {"total": {"type": "number"}}}},
    }
    validation = store.parse_validation(["order.id", "customer.email"], schema)
    _, token = await store.create(conn, receiver_settings.prefix, name="v", validation=validation)

    bad = json.dumps({"order": {"total": "twelve"}}).encode()
    r = await post(url, token, bad)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_failed"
    assert {v["path"] for v in body["violations"]} == {
        "$.order.id",
        "$.customer.email",
        "$.order.total",
    }
    assert '"twelve" is not of type "number"' in body["detail"]

    for payload, status in ((b"{nope", 400), (b"[1]", 400)):
        assert (await post(url, token, payload)).status_code == status
    r = await post(url, token, ORDER, **{"content-type": "text/plain"})
    assert r.status_code == 415
    assert (await post(url, token, b"{}" + b" " * 5000)).status_code == 413
    assert await received(conn) == []

    good = json.dumps({"order": {"id": 1, "total": 3}, "customer": {"email": "a@b"}}).encode()
    assert (await post(url, token, good)).status_code == 202


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"a": ' + b"[" * 1500 + b"]" * 1500 + b"}", "nested too deeply"),
        (b'{"a": ' + b'{"b": ' * 64 + b"1" + b"}" * 64 + b"}", "nested more than 64 levels"),
        (b'{"order": {"id": "A-\xff"}}', "not valid UTF-8"),
        (b'{"order": {"id": "\xed\xa0\x80"}}', "not valid UTF-8"),
    ],
)
async def test_bodies_the_parser_cannot_take_are_400_and_record_nothing(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig, body: bytes, detail: str
):
    schema = {"$defs": {"n": {"type": "object", "additionalProperties": {"$ref": "#/$defs/n"}}}}
    validation = store.parse_validation(["order.id"], schema)
    _, token = await store.create(
        conn, receiver_settings.prefix, name="deep", validation=validation
    )

    r = await post(url, token, body)

    assert (r.status_code, r.json()["error"]) == (400, "bad_body")
    assert detail in r.json()["detail"]
    assert await received(conn) == []


async def test_a_body_at_the_depth_limit_is_accepted(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    _, token = await store.create(conn, receiver_settings.prefix, name="deep-ok")
    body = b'{"order": {"id": 1}, "a": ' + b"[" * 63 + b"]" * 63 + b"}"  # 64 levels in all

    assert (await post(url, token, body)).status_code == 202


async def test_idempotency_key_and_webhook_id_record_a_delivery_once(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    _, token = await store.create(conn, receiver_settings.prefix, name="dup")
    first = await post(url, token, **{"idempotency-key": "k-1", "x-event-type": "Order Created"})
    again = await post(url, token, **{"idempotency-key": "k-1"})
    by_id = await post(url, token, **{"webhook-id": "msg_1"})
    by_id_again = await post(url, token, **{"webhook-id": "msg_1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
    assert (by_id.status_code, by_id_again.status_code) == (202, 200)
    rows = await received(conn)
    assert len(rows) == 2
    data = msgspec.json.decode(rows[0].event.data, type=ev.WebhookReceived)
    assert (data.delivery_id, data.event_type) == ("k-1", "Order Created")
    assert rows[0].bus_subject.endswith(".order_created")


async def test_every_refusal_looks_like_an_unknown_path(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    prefix = receiver_settings.prefix
    _, inactive = await store.create(conn, prefix, name="inactive", status="INACTIVE")
    _, suspended = await store.create(conn, prefix, name="suspended")
    await store.set_status(conn, prefix, "suspended", "SUSPENDED")
    _, deleted = await store.create(conn, prefix, name="deleted")
    await store.delete(conn, prefix, "deleted")
    _, rotated_away = await store.create(conn, prefix, name="rotated")
    await store.rotate(conn, prefix, "rotated")
    tokens = [
        secrets.token_urlsafe(32),  # unknown, well formed
        "x",  # unknown, badly formed
        "é" * 40,
        inactive,
        suspended,
        deleted,
        rotated_away,
    ]
    answers = [await post(url, t) for t in tokens]
    async with httpx.AsyncClient() as client:
        unknown_path = await client.post(f"{url}/no/such/path", content=ORDER, headers=JSON)
    expected = (
        unknown_path.status_code,
        unknown_path.headers["content-type"],
        unknown_path.content,
    )
    assert expected[0] == 404
    for token, r in zip(tokens, answers, strict=True):
        assert (r.status_code, r.headers["content-type"], r.content) == expected, token
    assert await received(conn) == []


async def test_tokens_are_stored_only_as_hashes_and_never_in_events_or_logs(
    url: str,
    conn: asyncpg.Connection,
    receiver_settings: ReceiverConfig,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    prefix = receiver_settings.prefix
    partner, first = await store.create(conn, prefix, name="secretive")
    _, second = await store.rotate(conn, prefix, partner.partner_id)
    assert (await post(url, second)).status_code == 202

    columns = {
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'partners'"
        )
    }
    assert not {c for c in columns if "token" in c} - {"token_id"}  # an id, not the token
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM partner_tokens WHERE token_sha256 = $1",
            hashlib.sha256(second.encode()).digest(),
        )
        == 1
    )
    assert await conn.fetchval("SELECT count(*) FROM partner_tokens") == 1  # the old one is gone

    async def dump(table: str) -> str:
        return "\n".join(
            v.hex() if isinstance(v, bytes) else str(v)
            for row in await conn.fetch(f"SELECT * FROM {table}")
            for v in row.values()
        )

    tables = {t: await dump(t) for t in ("partners", "partner_tokens", "events", "outbox")}
    for token in (first, second):
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert not [t for t, text in tables.items() if token in text]
        assert not [t for t, text in tables.items() if digest in text and t != "partner_tokens"]
    assert (await post(url, first)).status_code == 404
    assert (await post(url, second, b"{bad")).status_code == 400
    # Everything hookbus logged, extras included. (The test's HTTP client logs URLs, and so
    # does uvicorn's access log, which the receiver runs with switched off.)
    server_logs = " ".join(
        str(r.__dict__)
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore", "uvicorn.access"))
    )
    for token in (first, second):
        assert token not in server_logs
    for row in await eventlog.recent(conn, limit=100):
        data = bytes(row.event.data).decode()
        for token in (first, second):
            assert token not in data
            assert hashlib.sha256(token.encode()).hexdigest() not in data


async def test_rebuild_restores_partners_from_the_log_and_tokens_keep_working(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    prefix = receiver_settings.prefix
    _, token = await store.create(conn, prefix, name="rb", description="before")
    await store.update(conn, prefix, "rb", description="after", tenant="t2")
    _, token = await store.rotate(conn, prefix, "rb")
    await store.set_status(conn, prefix, "rb", "SUSPENDED")
    await store.set_status(conn, prefix, "rb", "ACTIVE")
    _, gone = await store.create(conn, prefix, name="gone")
    await store.delete(conn, prefix, "gone")
    before = await store.list_partners(conn, include_deleted=True)

    await readmodels.rebuild(conn)

    assert await store.list_partners(conn, include_deleted=True) == before
    r = await post(url, token)
    assert r.status_code == 202
    [row] = await received(conn)
    assert row.event.tenant == "t2"
    assert (await post(url, gone)).status_code == 404


async def test_names_are_unique_among_live_partners(
    conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    prefix = receiver_settings.prefix
    await store.create(conn, prefix, name="same")
    with pytest.raises(store.NameTaken):
        await store.create(conn, prefix, name="same")
    await store.delete(conn, prefix, "same")
    again, _ = await store.create(conn, prefix, name="same")
    assert (await store.get(conn, "same")).partner_id == again.partner_id
    with pytest.raises(store.PartnerError, match="is deleted"):
        await store.rotate(
            conn, prefix, (await store.list_partners(conn, include_deleted=True))[0].partner_id
        )


def counted(metrics: str, outcome: str) -> float:
    """The partner requests counted with ``outcome`` (0 before the first)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "hookbus_receiver_partner_requests_total" and sample.labels == {
                "outcome": outcome
            }:
                return sample.value
    return 0.0


async def test_requests_are_counted_by_outcome(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    _, token = await store.create(
        conn, receiver_settings.prefix, name="counted",
        validation=store.parse_validation(["order.id"]),
    )  # fmt: skip
    outcomes = ("accepted", "duplicate", "not_found", "validation_failed", "bad_body")
    async with httpx.AsyncClient() as client:
        before = (await client.get(f"{url}/metrics")).text
        await post(url, token, **{"idempotency-key": "m-1"})
        await post(url, token, **{"idempotency-key": "m-1"})
        await post(url, secrets.token_urlsafe(32))
        await post(url, token, b'{"order": {}}')
        await post(url, token, b"{nope")
        after = (await client.get(f"{url}/metrics")).text
    assert {o: counted(after, o) - counted(before, o) for o in outcomes} == dict.fromkeys(
        outcomes, 1.0
    )


async def test_an_unusable_stored_validation_is_503_and_records_nothing(
    url: str, conn: asyncpg.Connection, receiver_settings: ReceiverConfig
):
    """Our misconfiguration, not the partner's fault: they are told to send it again."""
    broken = ev.PartnerValidation(schema={"type": 12})  # not a JSON Schema
    _, token = await store.create(conn, receiver_settings.prefix, name="broken", validation=broken)

    r = await post(url, token)

    assert (r.status_code, r.headers["retry-after"]) == (503, "5")
    assert r.json() == {
        "error": "unavailable",
        "detail": "this partner's validation is misconfigured",
    }
    assert await received(conn) == []


# A classic catastrophic pattern (a lookbehind makes the regex engine backtrack): each
# of these strings costs it tens of milliseconds or more, a few hundred of them seconds.
REDOS = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "pattern": r"^(\w+\s?)*$(?<=\w)"}}
    },
}
REDOS_BODY = json.dumps({"tags": [f"{'a' * 28}!{i}" for i in range(400)]}).encode()


def budgeted(settings: ReceiverConfig, budget: float) -> ReceiverConfig:
    receiver = msgspec.structs.replace(
        settings.receiver, max_body_bytes=65536, validation_timeout=budget
    )
    return msgspec.structs.replace(settings, receiver=receiver)


async def test_an_expensive_validation_is_refused_and_never_stalls_other_endpoints(
    receiver_settings: ReceiverConfig,
):
    settings = budgeted(receiver_settings, 1.0)
    async with (
        serve(settings) as url,
        open_pool(settings.database, run_migrations=False) as pool,
        pool.acquire() as conn,
    ):
        validation = store.parse_validation(["id"], REDOS)
        _, token = await store.create(conn, settings.prefix, name="redos", validation=validation)
        expensive = asyncio.create_task(post(url, token, REDOS_BODY))
        answered = 0
        async with httpx.AsyncClient() as client:
            while not expensive.done():
                assert (await client.get(f"{url}/healthz")).status_code == 200
                answered += 1
            refused = expensive.result()
            # The worker that ran out of time was replaced: the next body is validated.
            cheap = await post(url, token, json.dumps({"id": 1, "tags": ["a"]}).encode())
            wrong = await post(url, token, json.dumps({"id": 1, "tags": [1]}).encode())

        assert (refused.status_code, refused.json()["error"]) == (422, "validation_aborted")
        assert "longer than 1 s" in refused.json()["detail"]
        assert answered >= 10, answered  # the loop kept serving while the check ran
        assert (cheap.status_code, wrong.status_code) == (202, 422)
        assert wrong.json()["error"] == "validation_failed"
        assert len(await received(conn)) == 1


async def test_checks_past_the_workers_are_refused_or_asked_to_retry_never_5xx(
    receiver_settings: ReceiverConfig,
):
    settings = budgeted(receiver_settings, 0.5)
    async with (
        serve(settings) as url,
        open_pool(settings.database, run_migrations=False) as pool,
        pool.acquire() as conn,
    ):
        _, token = await store.create(
            conn, settings.prefix, name="busy", validation=store.parse_validation([], REDOS)
        )
        answers = await asyncio.gather(*(post(url, token, REDOS_BODY) for _ in range(4)))
        after = await post(url, token, json.dumps({"tags": ["ok"]}).encode())

        assert {(r.status_code, r.json()["error"]) for r in answers} <= {
            (422, "validation_aborted"),
            (429, "validation_busy"),
        }
        assert all(r.headers.get("retry-after") for r in answers if r.status_code == 429)
        assert after.status_code == 202
        assert len(await received(conn)) == 1
