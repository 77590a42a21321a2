"""The whole system as separate processes: each service started the way people start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hookbus_cli.embedded import NatsServer, Postgres, free_port

from ..conftest import Servers

SERVICES = ("receiver", "router", "executor", "dispatcher")


class System:
    """Starts, kills and restarts service processes against one config."""

    def __init__(self, config: Path, env: dict[str, str], logs: Path) -> None:
        self.config = config
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.receiver_port = int(env["HOOKBUS_RECEIVER__PORT"])
        self.url = f"http://127.0.0.1:{self.receiver_port}"

    def start(self, *services: str) -> None:
        for name in services or SERVICES:
            with open(self.logs / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"hookbus_{name}", "--config", str(self.config)],
                    env=self.env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
        if "receiver" in (services or SERVICES):
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs["receiver"]
            if proc.poll() is not None:
                raise AssertionError(f"receiver exited: {self.log('receiver')}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"receiver not ready: {self.log('receiver')}")

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hookbus_cli.main", "--config", str(self.config), *args],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip


def system_env(servers_nats_url: str, database_url: str, prefix: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
    return {
        **keep,
        "HOOKBUS_PREFIX": prefix,
        "HOOKBUS_NATS__URL": servers_nats_url,
        "HOOKBUS_DATABASE__URL": database_url,
        "HOOKBUS_DATABASE__SCHEMA": prefix,
        "HOOKBUS_RECEIVER__PORT": str(free_port()),
        "HOOKBUS_ROUTER__HEALTH_PORT": str(free_port()),
        "HOOKBUS_EXECUTOR__HEALTH_PORT": str(free_port()),
        "HOOKBUS_DISPATCHER__HEALTH_PORT": str(free_port()),
        # The sinks deliveries go to listen on loopback, which the dispatcher refuses
        # unless allowed.
        "HOOKBUS_DISPATCHER__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "HOOKBUS_LOG__LEVEL": "DEBUG",
        # A killed consumer's unacked messages go to the next one sooner.
        "HOOKBUS_ROUTER__ACK_WAIT_SECONDS": "3",
    }


@pytest.fixture
def make_system(tmp_path: Path, prefix: str) -> Iterator[object]:
    systems: list[System] = []

    def make(config_text: str, servers: Servers) -> System:
        config = tmp_path / "hookbus.toml"
        config.write_text(config_text)
        env = system_env(servers.nats_url, servers.database_url, prefix)
        s = System(config, env, tmp_path)
        systems.append(s)
        return s

    yield make
    for s in systems:
        s.stop()


@pytest.fixture
def chaos_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, to stop and start (the session one is shared)."""
    n = NatsServer(tmp_path / "chaos-nats", log_file=tmp_path / "chaos-nats.log")
    n.start()
    yield n
    n.stop()


@pytest.fixture
def chaos_pg(tmp_path: Path) -> Iterator[Postgres]:
    """A Postgres of this test's own, to stop and start."""
    pg = Postgres(tmp_path / "chaos-pg")
    pg.start()
    yield pg
    pg.stop()
