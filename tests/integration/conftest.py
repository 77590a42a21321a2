"""Shared receiver fixtures: one real receiver (uvicorn in a thread) per test module."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
import uvicorn

from hookbus_cli.embedded import free_port
from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.db import open_pool
from hookbus_common.settings import Settings, extend
from hookbus_receiver import config as receiver_config
from hookbus_receiver.app import create_app
from hookbus_receiver.config import ReceiverConfig, ReceiverSettings

from ..conftest import Servers
from .serving import serve


def module_settings(
    servers: Servers,
    base_dir: Path,
    sources_toml: str,
    env: dict[str, str] | None = None,
    receiver_toml: str = "",
) -> ReceiverConfig:
    """Settings of a whole test module, loaded from a real file the way services load it:
    its own stream, schema and port, and the given ``[sources.*]`` tables."""
    prefix = "m" + secrets.token_hex(4)
    config = base_dir / "hookbus.toml"
    config.write_text(
        f'prefix = "{prefix}"\n'
        f'[nats]\nurl = "{servers.nats_url}"\nconnect_timeout = 10\n'
        f'[database]\nurl = "{servers.database_url}"\nschema = "{prefix}"\npool_max = 5\n'
        f"[receiver]\nport = {free_port()}\n{receiver_toml}\n" + sources_toml
    )
    return receiver_config.load(config, env or {})


@contextmanager
def serve_in_thread(settings: ReceiverConfig) -> Iterator[str]:
    """The receiver under uvicorn in its own thread and event loop; yields its base URL.

    A thread (not the test's loop) lets one receiver serve every test of a module, async
    or not, whatever loop each test runs on.
    """
    port = settings.receiver.port
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None,
        lifespan="on", access_log=False, proxy_headers=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "receiver exited during start-up"
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def receiver_settings(settings: Settings) -> ReceiverConfig:
    """This test's settings with a receiver on a free port and a small body limit; a module
    overrides this fixture to add its sources."""
    return extend(
        settings, ReceiverConfig, receiver=ReceiverSettings(port=free_port(), max_body_bytes=4096)
    )


@pytest.fixture
async def url(receiver_settings: ReceiverConfig) -> AsyncIterator[str]:
    """A real receiver (uvicorn on the test's loop) for this test; its base URL."""
    async with serve(receiver_settings) as base:
        yield base


class Recorded(msgspec.Struct, frozen=True):
    id: str
    data: ev.WebhookReceived
    raw_body: bytes
    data_json: str


async def recorded(settings: Settings, source: str | None = None) -> list[Recorded]:
    """Every webhook in the event log (of one source), oldest first."""
    async with open_pool(settings.database, run_migrations=False) as pool:
        rows = await pool.fetch(
            "SELECT id, data, raw_body FROM events WHERE type = $1"
            " AND ($2::text IS NULL OR source = '/hookbus/receiver/' || $2) ORDER BY seq",
            ev.WebhookReceived.TYPE,
            source,
        )
    return [
        Recorded(
            id=r["id"],
            data=msgspec.json.decode(r["data"], type=ev.WebhookReceived),
            raw_body=eventlog.body_of(ev.WebhookReceived.TYPE, r["data"], r["raw_body"]) or b"",
            data_json=r["data"],
        )
        for r in rows
    ]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module")
