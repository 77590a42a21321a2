"""The image-push URL over real HTTP, with its secret kept in a real Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_receiver import webhookurl
from hookbus_receiver.config import ReceiverConfig

from .serving import run_cli, write_config

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
async def pool(url: str, receiver_settings: ReceiverConfig) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(receiver_settings.database, run_migrations=False) as p:
        yield p


@pytest.fixture
async def push_url(url: str, pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        secret = await webhookurl.current(conn)
    assert secret is not None  # made when the receiver started
    return f"{url}/api/webhook/{secret}"


async def push(target: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient() as client:
        return await client.post(
            target, content=content, headers={"content-type": "application/json", **headers}
        )


async def received(pool: asyncpg.Pool) -> list[eventlog.LoggedEvent]:
    async with pool.acquire() as conn:
        return await eventlog.recent(conn, limit=100)


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        (
            "registry.example.com:5000/org/team/app:1.4.2",
            ("registry.example.com:5000", "org/team", "app", "org/team/app", "1.4.2", None),
        ),
        ("nginx", ("docker.io", "library", "nginx", "library/nginx", "latest", None)),
        (
            f"ghcr.io/acme/api@{DIGEST}",
            ("ghcr.io", "acme", "api", "acme/api", None, DIGEST),
        ),
        (
            f"localhost:5000/app:dev@{DIGEST}",
            ("localhost:5000", "", "app", "app", "dev", DIGEST),
        ),
    ],
)
async def test_valid_pushes_are_recorded_with_the_parsed_image(
    push_url: str, pool: asyncpg.Pool, receiver_settings: ReceiverConfig, image: str, parts: tuple
):
    r = await push(push_url, {"image": image})
    assert r.status_code == 202, r.text
    [row] = await received(pool)
    assert row.event.id == r.json()["id"]
    assert row.bus_subject == f"{receiver_settings.prefix}.webhook.received.image-push.push"
    data = msgspec.json.decode(row.event.data, type=ev.WebhookReceived)
    assert (data.source, data.kind, data.event_type) == ("image-push", "image-push", "push")
    assert data.image is not None
    got = (data.image.registry, data.image.namespace, data.image.repository, data.image.path,
           data.image.tag, data.image.digest)  # fmt: skip
    assert got == parts
    assert (data.repository, data.tag) == (parts[3], parts[4])
    assert row.event.subject == data.image.canonical


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        ({"image": "Org/App:1"}, "bad_image", "must be lowercase"),
        ({"image": "app:"}, "bad_image", "trailing colon"),
        ({"image": "app@sha256:abc"}, "bad_image", "digest"),
        ({"image": ""}, "bad_image", "empty"),
        ({"image": 42}, "bad_body", "a string"),
        ({"tag": "v1"}, "bad_body", "image"),
        (b"{not json", "bad_body", "not valid JSON"),
        (b'["app"]', "bad_body", "JSON object"),
        (b'{"image": ' + b"[" * 1500 + b"]" * 1500 + b"}", "bad_body", "nested too deeply"),
        (b'{"image": "app:1", "x": ' + b"[" * 64 + b"]" * 64 + b"}", "bad_body", "64 levels"),
        (b'{"image": "app:\xff1"}', "bad_body", "not valid UTF-8"),
        (b'{"image": "app:1", "\xc0\x80": 1}', "bad_body", "not valid UTF-8"),
        (b'{"image": "app:1", "big": 1e400}', "bad_body", "out of range"),
    ],
)
async def test_malformed_pushes_get_400_with_the_reason_and_record_nothing(
    push_url: str, pool: asyncpg.Pool, body: object, error: str, reason: str
):
    r = await push(push_url, body)
    assert r.status_code == 400
    assert r.json()["error"] == error
    assert reason in r.json()["detail"]
    assert await received(pool) == []


async def test_regenerate_retires_the_old_url_at_once(
    url: str, push_url: str, pool: asyncpg.Pool, receiver_settings: ReceiverConfig, tmp_path: Path
):
    config = write_config(receiver_settings, tmp_path / "hookbus.toml")
    code, shown, _ = await run_cli(config, "webhook-url", "show")
    assert (code, shown.strip()) == (0, push_url)

    code, out, _ = await run_cli(config, "webhook-url", "regenerate")
    assert code == 0
    new_url = out.splitlines()[0]
    assert new_url != push_url
    assert new_url.startswith(f"{url}/api/webhook/")

    old = await push(push_url, {"image": "acme/app:1"})
    async with httpx.AsyncClient() as client:
        unknown = await client.post(f"{url}/no/such/path", content=b"{}")
    assert unknown.status_code == 404
    assert (old.status_code, old.content) == (unknown.status_code, unknown.content)
    assert (await push(new_url, {"image": "acme/app:1"})).status_code == 202
    assert len(await received(pool)) == 1


async def test_wrong_secrets_look_like_unknown_paths(url: str, push_url: str):
    async with httpx.AsyncClient() as client:
        unknown = await client.post(f"{url}/no/such/path", content=b"{}")
        for secret in ("", "x", push_url.rsplit("/", 1)[1].upper(), "é"):
            r = await client.post(f"{url}/api/webhook/{secret}", content=b'{"image": "a"}')
            assert (r.status_code, r.content) == (404, unknown.content), secret


async def test_idempotency_key_records_a_push_once(push_url: str, pool: asyncpg.Pool):
    first = await push(push_url, {"image": "acme/app:2"}, **{"idempotency-key": "ci-77"})
    again = await push(push_url, {"image": "acme/app:2"}, **{"idempotency-key": "ci-77"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(await received(pool)) == 1


async def test_receivers_starting_together_agree_on_one_secret(
    receiver_settings: ReceiverConfig,
):
    async with open_pool(receiver_settings.database) as pool:

        async def one() -> str:
            async with pool.acquire() as conn:
                return await webhookurl.ensure(conn)

        secrets = await asyncio.gather(*(one() for _ in range(5)))
    assert len(set(secrets)) == 1


def counted(metrics: str, outcome: str) -> float:
    """The image-push requests counted with ``outcome`` (0 before the first)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "hookbus_receiver_image_push_requests_total" and sample.labels == {
                "outcome": outcome
            }:
                return sample.value
    return 0.0


async def test_requests_are_counted_by_outcome(url: str, push_url: str):
    outcomes = ("accepted", "duplicate", "not_found", "bad_image", "bad_body")
    async with httpx.AsyncClient() as client:
        before = (await client.get(f"{url}/metrics")).text
        await push(push_url, {"image": "acme/app:3"}, **{"idempotency-key": "m-1"})
        await push(push_url, {"image": "acme/app:3"}, **{"idempotency-key": "m-1"})
        await push(f"{url}/api/webhook/wrong", {"image": "acme/app:3"})
        await push(push_url, {"image": "UPPER/case"})
        await push(push_url, {"image": 3})
        after = (await client.get(f"{url}/metrics")).text
    assert {o: counted(after, o) - counted(before, o) for o in outcomes} == dict.fromkeys(
        outcomes, 1.0
    )
