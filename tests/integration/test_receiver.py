"""The receiver over real HTTP, recording into a real Postgres and publishing to NATS."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgspec
import pytest

from hookbus_cli.embedded import free_port
from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_common.settings import Settings, extend
from hookbus_receiver.config import GithubSource, ReceiverConfig, ReceiverSettings, Secret
from hookbus_receiver.signatures import sign_github

pytestmark = pytest.mark.integration

SECRET = "It's a Secret to Everybody"
PUSH = json.dumps(
    {
        "ref": "refs/heads/main",
        "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "repository": {"full_name": "acme/app"},
        "sender": {"login": "octocat"},
    }
).encode()


def github_headers(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature-256": sign_github(body, secret.encode()),
    }


@pytest.fixture
def receiver_settings(settings: Settings) -> ReceiverConfig:
    return extend(
        settings,
        ReceiverConfig,
        receiver=ReceiverSettings(port=free_port(), max_body_bytes=4096),
        sources={"github": GithubSource(secrets=[Secret(value=SECRET)])},
    )


async def _events(s: Settings) -> list[eventlog.LoggedEvent]:
    async with open_pool(s.database, run_migrations=False) as pool, pool.acquire() as conn:
        return await eventlog.recent(conn, limit=100)


async def test_signed_push_is_recorded_with_raw_body_then_published(
    url: str, receiver_settings: ReceiverConfig
) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, "d-1")
        )
    assert r.status_code == 202
    event_id = r.json()["id"]
    rows = await _events(receiver_settings)
    assert [x.event.id for x in rows] == [event_id]
    data = msgspec.json.decode(rows[0].event.data, type=ev.WebhookReceived)
    assert (data.repository, data.branch, data.sender) == ("acme/app", "main", "octocat")
    assert data.delivery_id == "d-1"
    assert data.headers["x-hub-signature-256"] == github_headers(PUSH, "d-1")["x-hub-signature-256"]
    assert rows[0].bus_subject == f"{receiver_settings.prefix}.webhook.received.github.push"
    async with (
        open_pool(receiver_settings.database, run_migrations=False) as pool,
        pool.acquire() as conn,
    ):
        assert await eventlog.raw_body(conn, event_id) == PUSH
        deadline = asyncio.get_running_loop().time() + 10
        while await eventlog.outbox_depth(conn):  # published, then forgotten by the outbox
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    # The message on the bus is the same event, byte-identical payload.
    import nats

    nc = await nats.connect(receiver_settings.nats.url)
    try:
        js = nc.jetstream()
        msg = await js.get_last_msg(
            receiver_settings.prefix.upper(), f"{receiver_settings.prefix}.webhook.received.>"
        )
        bus_event = ev.decode(msg.data)
        assert bus_event.id == event_id
        assert bytes(bus_event.data.payload) == PUSH
    finally:
        await nc.close()


async def test_repeated_delivery_is_recorded_once(
    url: str, receiver_settings: ReceiverConfig
) -> None:
    async with httpx.AsyncClient() as client:
        first = await client.post(
            f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, "dup")
        )
        again = await asyncio.gather(*(
            client.post(f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, "dup"))
            for _ in range(5)
        ))  # fmt: skip
    assert first.status_code == 202
    assert {r.status_code for r in again} == {200}
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert len(await _events(receiver_settings)) == 1


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/hooks/github", PUSH, github_headers(PUSH, "x", secret="wrong"), 401, "unauthorized"),
        ("/hooks/github", PUSH + b" ", github_headers(PUSH, "x"), 401, "unauthorized"),
        ("/hooks/github", PUSH, {"x-github-event": "push"}, 401, "unauthorized"),
        ("/hooks/nosuch", PUSH, github_headers(PUSH, "x"), 404, "not_found"),
        ("/no/such/path", PUSH, github_headers(PUSH, "x"), 404, "not_found"),
        ("/hooks/github", b"x" * 5000, github_headers(b"x" * 5000, "x"), 413, "body_too_large"),
        ("/hooks/github", b"{not json", github_headers(b"{not json", "x"), 400, "bad_body"),
        ("/hooks/github", b"[1, 2]", github_headers(b"[1, 2]", "x"), 400, "bad_body"),
    ],
)
async def test_bad_requests_are_refused_and_record_nothing(
    url: str, receiver_settings: ReceiverConfig, path: str, body: bytes,
    headers: dict[str, str], status: int, error: str,
) -> None:  # fmt: skip
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url}{path}", content=body, headers=headers)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert SECRET not in r.text
    assert await _events(receiver_settings) == []


async def test_unknown_source_looks_like_any_unknown_path(url: str) -> None:
    async with httpx.AsyncClient() as client:
        a = await client.post(f"{url}/hooks/nosuch", content=PUSH)
        b = await client.post(f"{url}/nothing/here", content=PUSH)
    assert (a.status_code, a.content) == (b.status_code, b.content)


async def test_health_ready_and_metrics(url: str) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/healthz")).status_code == 200
        ready = await client.get(f"{url}/readyz")
        assert ready.status_code == 200
        assert "nats: ok" in ready.text
        assert "postgres: ok" in ready.text
        await client.post(f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, "m"))
        metrics = (await client.get(f"{url}/metrics")).text
    assert 'hookbus_receiver_requests_total{outcome="accepted",source="github"}' in metrics
    commits = [
        line
        for line in metrics.splitlines()
        if line.startswith("hookbus_receiver_commit_seconds_count")
    ]
    assert commits
    assert float(commits[0].split()[-1]) >= 1


async def test_concurrent_deliveries_share_group_commits(
    url: str, receiver_settings: ReceiverConfig
) -> None:
    async with httpx.AsyncClient() as client:
        rs = await asyncio.gather(*(
            client.post(f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, f"c-{i}"))
            for i in range(50)
        ))  # fmt: skip
    assert [r.status_code for r in rs] == [202] * 50
    rows = await _events(receiver_settings)
    assert sorted(r.event.id for r in rows) == sorted(r.json()["id"] for r in rs)


async def test_paths_beside_the_hooks_fast_path_answer_like_any_other(url: str) -> None:
    async with httpx.AsyncClient() as client:
        unknown = await client.post(f"{url}/nothing/here", content=PUSH)
        for path in ("/hooks/", "/hooks/github/extra", "/hooks"):
            r = await client.post(f"{url}{path}", content=PUSH)
            assert (r.status_code, r.content) == (unknown.status_code, unknown.content), path
        wrong_method = await client.get(f"{url}/hooks/github")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "method_not_allowed"}
