"""Fixtures: a real nats-server and a real Postgres per test session; per test, its own
subject prefix (so its own stream) and its own schema.

HOOKBUS_TEST_BACKEND=testcontainers runs the same tests against testcontainers' NATS and
Postgres images instead of the embedded servers (needs a Docker engine that can pull them).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from hookbus_cli.embedded import NatsServer, Postgres
from hookbus_common.service import Runtime, runtime
from hookbus_common.settings import DatabaseSettings, NatsSettings, Settings

BACKEND = os.environ.get("HOOKBUS_TEST_BACKEND", "embedded")
if BACKEND not in ("embedded", "testcontainers"):
    raise pytest.UsageError(
        f"HOOKBUS_TEST_BACKEND must be embedded or testcontainers, not {BACKEND!r}"
    )


class Servers(msgspec.Struct):
    nats_url: str
    database_url: str
    nats: NatsServer | None = None


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if BACKEND == "testcontainers":
        from testcontainers.community.nats import NatsContainer
        from testcontainers.community.postgres import PostgresContainer

        with (
            NatsContainer("nats:2.10", jetstream=True) as n,
            PostgresContainer("postgres:16", driver=None) as p,
        ):
            yield Servers(nats_url=n.nats_uri(), database_url=p.get_connection_url())
        return
    base = tmp_path_factory.mktemp("servers")
    nats = NatsServer(base / "nats", log_file=base / "nats.log")
    nats.start()
    pg = Postgres(base / "pg", delete=True)
    try:
        url = pg.start()
        yield Servers(nats_url=nats.url, database_url=url, nats=nats)
    finally:
        pg.stop()
        nats.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def settings(servers: Servers, prefix: str, tmp_path: Path) -> Settings:
    """Settings isolated to this test: its own stream (prefix) and its own schema."""
    return Settings(
        prefix=prefix,
        base_dir=str(tmp_path),
        nats=NatsSettings(url=servers.nats_url, connect_timeout=10),
        database=DatabaseSettings(url=servers.database_url, schema=prefix, pool_max=5),
    )


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    async with runtime(settings, "test") as r:
        yield r


@pytest.fixture(autouse=True)
def _recursion_limit() -> Iterator[None]:
    """The CLI raises the recursion limit of the process it runs in (to decode any payload
    the receiver accepted); a test calling it in-process must not change what a receiver
    served by a later test accepts."""
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)
