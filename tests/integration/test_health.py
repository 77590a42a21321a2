"""The health listener of router, executor and dispatcher on real sockets: a second replica
on one host gets a free port when the configured one is taken."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from hookbus_cli.embedded import free_port
from hookbus_common.health import serve_health

pytestmark = pytest.mark.integration


async def all_ready() -> dict[str, bool]:
    return {"nats": True, "postgres": True}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on, as the first replica's health port would be."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


async def test_a_free_configured_port_is_used_as_configured():
    port = free_port()

    async with serve_health("0.0.0.0", port, all_ready, fall_back_when_busy=True) as bound:
        assert bound == port
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/healthz")
    assert r.status_code == 200


async def test_a_busy_port_gives_way_to_a_free_one_which_is_logged(taken_port, caplog):
    caplog.set_level(logging.INFO, logger="hookbus_common.health")

    async with serve_health("0.0.0.0", taken_port, all_ready, fall_back_when_busy=True) as bound:
        assert bound not in (0, taken_port)
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{bound}/healthz")
            ready = await client.get(f"http://127.0.0.1:{bound}/readyz")

    assert (health.status_code, ready.status_code) == (200, 200)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"health port {taken_port} is in use" in warning.getMessage()
    assert f"on port {bound} instead" in warning.getMessage()


async def test_without_fallback_a_busy_port_is_an_error(taken_port):
    with pytest.raises(OSError, match="address already in use"):
        async with serve_health("0.0.0.0", taken_port, all_ready):
            pass
