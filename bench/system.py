"""The parts under test as real processes: embedded nats-server and Postgres, hookbus
services started the way people start them, the bare app and the sink."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from hookbus_cli.embedded import NatsServer, Postgres, free_port, wait_until_ok
from hookbus_common.settings import DatabaseSettings, NatsSettings, Settings

from . import payloads

REPO = Path(__file__).resolve().parent.parent


class Servers:
    """nats-server and Postgres for the whole run, their data under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nats = NatsServer(base / "nats", log_file=base / "nats.log")
        self.pg = Postgres(base / "pg", delete=True)
        self.database_url = ""

    def __enter__(self) -> Servers:
        self.nats.start()
        try:
            self.database_url = self.pg.start()
        except BaseException:
            self.nats.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.pg.stop()
        self.nats.stop()


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    if wait_until_ok(url, timeout=timeout, alive=lambda: proc.poll() is None, interval=0.05):
        return
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}")
    raise RuntimeError(f"{what} not ready at {url} within {timeout}s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class System:
    """hookbus services against ``servers`` with their own prefix (stream) and schema."""

    def __init__(self, servers: Servers, workdir: Path, config: str, *, workers: int) -> None:
        self.prefix = "b" + secrets.token_hex(4)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "hookbus.toml"
        self.config.write_text(config)
        self.port = free_port()
        self.health = {s: free_port() for s in ("router", "executor", "dispatcher")}
        keep = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBUS_")}
        self.env = {
            **keep,
            "HOOKBUS_PREFIX": self.prefix,
            "HOOKBUS_NATS__URL": servers.nats.url,
            "HOOKBUS_DATABASE__URL": servers.database_url,
            "HOOKBUS_DATABASE__SCHEMA": self.prefix,
            "HOOKBUS_RECEIVER__PORT": str(self.port),
            "HOOKBUS_RECEIVER__WORKERS": str(workers),
            **{f"HOOKBUS_{s.upper()}__HEALTH_PORT": str(p) for s, p in self.health.items()},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._servers = servers

    def settings(self, base_dir: Path) -> Settings:
        """Settings for the bench's own runtime on this system's stream and schema."""
        return Settings(
            prefix=self.prefix,
            base_dir=str(base_dir),
            nats=NatsSettings(url=self._servers.nats.url),
            database=DatabaseSettings(url=self._servers.database_url, schema=self.prefix),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *services: str) -> None:
        for name in services:
            with open(self.workdir / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"hookbus_{name}", "--config", str(self.config)],
                    env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                )  # fmt: skip
        for name in services:
            port = self.port if name == "receiver" else self.health[name]
            wait_http(f"http://127.0.0.1:{port}/readyz", self.procs[name], name)

    def roles(self) -> dict[str, set[int]]:
        return {name: {p.pid} for name, p in self.procs.items()}

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self) -> None:
        stop(list(self.procs.values()))
        self.procs.clear()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def source_config() -> str:
    return f"""
[log]
level = "INFO"

[sources.github]
kind = "github"
secrets = [{{ value = "{payloads.SECRET}" }}]
"""


def start_bare_app(workers: int, logdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with open(logdir / "bareapp.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bareapp", "--port", str(port), "--workers", str(workers)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, "bare app")
    return proc, port


def start_sink(logdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with open(logdir / "sink.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--port", str(port)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/_reset", proc, "sink")
    return proc, port
