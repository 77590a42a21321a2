"""Invariants 1, 2 and 5: an accepted webhook is never lost, whatever dies when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from hookbus_cli.embedded import NatsServer, Postgres
from hookbus_common.db import open_pool
from hookbus_common.settings import DatabaseSettings

from ..conftest import Servers
from .conftest import System
from .test_slice import config, headers, push

pytestmark = pytest.mark.e2e


def routed_webhook_ids(system: System) -> tuple[list[str], int]:
    """The webhook ids the router has handled, and the outbox depth."""

    async def run() -> tuple[list[str], int]:
        db = DatabaseSettings(
            url=system.env["HOOKBUS_DATABASE__URL"], schema=system.env["HOOKBUS_DATABASE__SCHEMA"]
        )
        async with open_pool(db, run_migrations=False) as pool, pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT data::text FROM events WHERE type = 'io.hookbus.webhook.routed.v1'"
            )
            depth = await conn.fetchval("SELECT count(*) FROM outbox")
        return [msgspec.json.decode(r["data"])["webhook_id"] for r in rows], int(depth)

    return asyncio.run(run())


@pytest.fixture
def own_nats(tmp_path: Path) -> NatsServer:
    """A nats-server this test may stop and restart (the session one is shared)."""
    n = NatsServer(tmp_path / "own-nats", log_file=tmp_path / "own-nats.log")
    n.start()
    yield n  # type: ignore[misc]
    n.stop()


def test_events_accepted_while_nats_is_down_reach_the_router_once_after_a_sigkill(
    servers: Servers, make_system: Callable[..., System], own_nats: NatsServer, tmp_path: Path
) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    system = make_system(config(script), Servers(own_nats.url, servers.database_url))
    system.start("receiver")

    # NATS goes away; the receiver keeps accepting, because Postgres is where an event
    # becomes durable (invariant 1), and cannot publish what it accepted.
    own_nats.stop()
    accepted = []
    for i in range(20):
        body = push(n=i)
        r = httpx.post(
            f"{system.url}/hooks/github", content=body, headers=headers(body, f"inv-{i}"),
            timeout=10,
        )  # fmt: skip
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])

    # Killed between commit and publish: nothing of its memory survives.
    system.kill("receiver")
    assert routed_webhook_ids(system) == ([], 20)

    own_nats.start()
    system.start("receiver", "router")  # the restarted receiver's relay publishes the outbox
    deadline = time.monotonic() + 60
    while True:
        ids, depth = routed_webhook_ids(system)
        if len(ids) >= 20 and depth == 0:
            break
        assert time.monotonic() < deadline, (len(ids), depth, system.log("receiver"))
        time.sleep(0.1)
    # Exactly once in effect: every accepted webhook routed, none twice.
    assert sorted(ids) == sorted(accepted)


def test_router_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    servers: Servers, make_system: Callable[..., System], tmp_path: Path
) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    system = make_system(config(script), servers)
    system.start("receiver", "router")
    accepted = []
    with httpx.Client() as client:
        for i in range(60):
            body = push(n=i)
            r = client.post(
                f"{system.url}/hooks/github", content=body, headers=headers(body, f"k-{i}")
            )
            assert r.status_code == 202
            accepted.append(r.json()["id"])
            if i == 20:
                system.kill("router")
            if i == 40:
                system.start("router")
    deadline = time.monotonic() + 60
    while True:
        ids, _ = routed_webhook_ids(system)
        if len(ids) >= 60:
            break
        assert time.monotonic() < deadline, (len(ids), system.log("router"))
        time.sleep(0.1)
    assert sorted(ids) == sorted(accepted)


@pytest.fixture
def own_pg(tmp_path: Path) -> Postgres:
    """A Postgres this test may stop and start again (the session one is shared)."""
    pg = Postgres(tmp_path / "own-pg")
    pg.start()
    yield pg  # type: ignore[misc]
    pg.stop()


def test_postgres_restart_refuses_while_down_then_loses_nothing(
    servers: Servers, make_system: Callable[..., System], own_pg: Postgres, tmp_path: Path
) -> None:
    script = tmp_path / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    system = make_system(config(script), Servers(servers.nats_url, own_pg.url))
    system.start("receiver", "router")

    def send(delivery: str, n: int) -> httpx.Response:
        body = push(n=n)
        return httpx.post(
            f"{system.url}/hooks/github", content=body, headers=headers(body, delivery), timeout=15
        )

    accepted = [send(f"pg-{i}", i).json()["id"] for i in range(5)]

    own_pg.stop()
    down = send("pg-during", 100)
    # Nothing could be recorded, so nothing was accepted: the sender is told to retry.
    assert down.status_code == 503
    assert down.headers["retry-after"]
    assert httpx.get(f"{system.url}/readyz").status_code == 503

    own_pg.start()
    deadline = time.monotonic() + 60
    while (again := send("pg-during", 100)).status_code != 202:
        assert again.status_code == 503, again.text
        assert time.monotonic() < deadline, system.log("receiver")
        time.sleep(0.2)
    accepted.append(again.json()["id"])  # the retried delivery is recorded, once
    accepted += [send(f"pg-after-{i}", 200 + i).json()["id"] for i in range(5)]

    deadline = time.monotonic() + 60
    while True:
        ids, depth = routed_webhook_ids(system)
        if len(ids) >= len(accepted) and depth == 0:
            break
        assert time.monotonic() < deadline, (len(ids), depth, system.log("router"))
        time.sleep(0.1)
    assert sorted(ids) == sorted(accepted)
