"""The receiver over real HTTP, recording into a real Postgres and publishing to NATS."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookbus_cli.embedded import free_port
from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_common.settings import Settings, extend
from hookbus_receiver import partnerstore as store
from hookbus_receiver import webhookurl
from hookbus_receiver.config import (
    GithubSource,
    RateLimit,
    ReceiverConfig,
    ReceiverSettings,
    Secret,
)
from hookbus_receiver.signatures import sign_github

from .serving import serve

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


# Signed bodies the JSON parser cannot take: past its nesting, or not UTF-8 inside a string.
DEEP = b'{"a": ' + b"[" * 1500 + b"]" * 1500 + b"}"
NOT_UTF8 = b'{"repository": {"full_name": "acme/\xff\xfeapp"}}'
OVERLONG = b'{"a": "\xc0\x80", "b": "\xed\xa0\x80"}'  # overlong NUL, an encoded surrogate
DEEP_FORM = b"payload=" + DEEP


def github_headers(
    body: bytes, delivery: str, secret: str = SECRET, ctype: str = "application/json"
) -> dict[str, str]:
    return {
        "content-type": ctype,
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
        ("/hooks/github", DEEP, github_headers(DEEP, "x"), 400, "bad_body"),
        ("/hooks/github", NOT_UTF8, github_headers(NOT_UTF8, "x"), 400, "bad_body"),
        ("/hooks/github", OVERLONG, github_headers(OVERLONG, "x"), 400, "bad_body"),
        (
            "/hooks/github",
            DEEP_FORM,
            github_headers(DEEP_FORM, "x", ctype="application/x-www-form-urlencoded"),
            400,
            "bad_body",
        ),
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


@pytest.mark.parametrize(
    ("body", "ctype", "detail"),
    [
        (DEEP, "application/json", "nested too deeply"),
        (DEEP_FORM, "application/x-www-form-urlencoded", "nested too deeply"),
        (NOT_UTF8, "application/json", "not valid UTF-8"),
        (OVERLONG, "application/json", "not valid UTF-8"),
    ],
)
async def test_a_signed_body_the_parser_cannot_take_says_why(
    url: str, receiver_settings: ReceiverConfig, body: bytes, ctype: str, detail: str
) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{url}/hooks/github", content=body, headers=github_headers(body, "p", ctype=ctype)
        )
    assert (r.status_code, r.json()["error"]) == (400, "bad_body")
    assert detail in r.json()["detail"]
    assert await _events(receiver_settings) == []


async def test_a_poisoned_push_among_concurrent_ones_is_refused_alone(
    receiver_settings: ReceiverConfig,
) -> None:
    """Postgres text cannot hold NUL: that push alone gets a 4xx, every other one sharing
    its batch is committed and answered 202."""
    batched = msgspec.structs.replace(
        receiver_settings,
        receiver=msgspec.structs.replace(
            receiver_settings.receiver, commit_interval_ms=100, commit_batch_size=256
        ),
    )
    poisoned = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/\0app"}})
    bodies = [PUSH] * 40
    bodies.insert(17, poisoned.encode())
    async with serve(batched) as url, httpx.AsyncClient() as client:
        rs = await asyncio.gather(*(
            client.post(f"{url}/hooks/github", content=b, headers=github_headers(b, f"p-{i}"))
            for i, b in enumerate(bodies)
        ))  # fmt: skip
    refused = rs.pop(17)
    assert (refused.status_code, refused.json()["error"]) == (400, "unstorable")
    assert "repository" in refused.json()["detail"]
    assert [r.status_code for r in rs] == [202] * 40
    rows = await _events(receiver_settings)
    assert sorted(r.event.id for r in rows) == sorted(r.json()["id"] for r in rs)


def _counted(metrics: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def _hang_up_mid_body(url: str, path: str) -> None:
    """Send headers promising 4,000 bytes, 100 of them, and close the connection."""
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        "x-github-event: push\r\ncontent-length: 4000\r\n\r\n".encode()
        + b'{"a": "'
        + b"x" * 93
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_clients_hanging_up_mid_body_are_counted_not_logged_as_errors(
    url: str, receiver_settings: ReceiverConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        open_pool(receiver_settings.database, run_migrations=False) as pool,
        pool.acquire() as conn,
    ):
        secret = await webhookurl.current(conn)
        _, token = await store.create(conn, receiver_settings.prefix, name="hangs-up")
    paths = {
        "/hooks/github": ("hookbus_receiver_requests_total", {"source": "github"}),
        f"/api/webhook/{secret}": ("hookbus_receiver_image_push_requests_total", {}),
        f"/webhook/v1/{token}": ("hookbus_receiver_partner_requests_total", {}),
    }
    async with httpx.AsyncClient() as client:
        before = (await client.get(f"{url}/metrics")).text
        for path in paths:
            for _ in range(20):
                await _hang_up_mid_body(url, path)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            after = (await client.get(f"{url}/metrics")).text
            counts = {
                path: _counted(after, name, outcome="disconnected", **labels)
                - _counted(before, name, outcome="disconnected", **labels)
                for path, (name, labels) in paths.items()
            }
            if all(c >= 20 for c in counts.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.05)
        # The server still answers normally.
        ok = await client.post(
            f"{url}/hooks/github", content=PUSH, headers=github_headers(PUSH, "h")
        )

    assert counts == dict.fromkeys(paths, 20.0)
    assert ok.status_code == 202
    noisy = [
        r
        for r in caplog.records
        if r.exc_info
        or (r.levelno >= logging.WARNING and r.name.startswith(("uvicorn", "hookbus_receiver")))
    ]
    assert noisy == [], [r.getMessage() for r in noisy]
    received = [
        e for e in await _events(receiver_settings) if e.event.type == ev.WebhookReceived.TYPE
    ]
    assert [e.event.id for e in received] == [ok.json()["id"]]


async def test_unsigned_junk_never_spends_a_real_senders_allowance(
    receiver_settings: ReceiverConfig,
) -> None:
    """The source's rate limit counts pushes that proved their sender; those that did not
    have an allowance of their own, per client address."""
    limited = GithubSource(
        secrets=[Secret(value=SECRET)],
        rate_limit=RateLimit(per_second=0.1, burst=2),  # the next token is 10 s away
        trusted_proxies=["127.0.0.1/32"],  # so X-Forwarded-For names each client
    )
    settings = msgspec.structs.replace(receiver_settings, sources={"github": limited})
    junk_from = {"x-forwarded-for": "198.51.100.7"}
    real_from = {"x-forwarded-for": "203.0.113.5"}
    async with serve(settings) as url, httpx.AsyncClient() as client:
        junk = [
            await client.post(
                f"{url}/hooks/github",
                content=PUSH,
                headers={**github_headers(PUSH, f"j-{i}", secret="guess"), **junk_from},
            )
            for i in range(6)
        ]
        real = [
            await client.post(
                f"{url}/hooks/github",
                content=PUSH,
                headers={**github_headers(PUSH, f"r-{i}"), **real_from},
            )
            for i in range(3)
        ]
        # Junk from the real sender's address counts against that address only.
        mixed = await client.post(
            f"{url}/hooks/github", content=PUSH, headers={"x-github-event": "push", **real_from}
        )

    assert [r.status_code for r in junk] == [401, 401, 429, 429, 429, 429]
    assert junk[2].json()["error"] == "unverified_rate_limited"
    assert 8 <= int(junk[2].headers["retry-after"]) <= 10
    assert [r.status_code for r in real] == [202, 202, 429]
    assert real[2].json()["error"] == "rate_limited"
    assert mixed.status_code == 401
    assert len(await _events(receiver_settings)) == 2
