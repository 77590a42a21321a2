"""A Postgres a test may stop and start again (the session's is shared by every test), and a
runtime whose pool reaches it: for tests of what happens while Postgres is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from prometheus_client import REGISTRY

from hookbus_cli.embedded import Postgres
from hookbus_common.service import Runtime, runtime
from hookbus_common.settings import Settings


class OwnPostgres:
    """The embedded Postgres in ``data_dir``: its data (and socket) stay across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.server = Postgres(data_dir)
        self.running = False
        self.url = ""

    def ensure_started(self) -> None:
        if not self.running:
            self.url = self.server.start()
            self.running = True

    def ensure_stopped(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    async def start(self) -> None:
        await asyncio.to_thread(self.ensure_started)

    async def stop(self) -> None:
        """A fast shutdown: sessions are ended, new connections refused until ``start``."""
        await asyncio.to_thread(self.ensure_stopped)


def serving(data_dir: Path) -> Iterator[OwnPostgres]:
    """A module's own Postgres, started (for a module-scoped fixture)."""
    pg = OwnPostgres(data_dir)
    pg.ensure_started()
    yield pg
    pg.ensure_stopped()


@asynccontextmanager
async def runtime_on(pg: OwnPostgres, settings: Settings) -> AsyncIterator[Runtime]:
    """The test's runtime (its NATS, prefix and schema), its Postgres pool on ``pg``; ``pg``
    is started first, and again at the end if the test left it stopped."""
    pg.ensure_started()
    database = msgspec.structs.replace(settings.database, url=pg.url)
    async with runtime(msgspec.structs.replace(settings, database=database), "test") as rt:
        yield rt
        pg.ensure_started()


def waiting_for_recovery(consumer: str) -> float:
    """The consumer's ``hookbus_consumer_waiting_for_recovery`` gauge, as /metrics shows it."""
    value = REGISTRY.get_sample_value(
        "hookbus_consumer_waiting_for_recovery", {"consumer": consumer}
    )
    return value or 0.0
