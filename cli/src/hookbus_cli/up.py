"""``hookbus up``: the whole system on embedded NATS and Postgres, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from hookbus_common import sealing
from hookbus_common.errors import ConfigError
from hookbus_common.settings import default_config_path
from hookbus_executor.config import ExecutorSettings

from . import quickstart
from .config import installation
from .embedded import EmbeddedError, NatsCluster, NatsServer, Postgres, wait_until_ok
from .migrate import migrate
from .serve import SERVICES, service_argv


def _wait_ready(
    base_url: str, children: dict[str, subprocess.Popen[bytes]], stopping: Callable[[], bool]
) -> bool:
    """Wait until the receiver answers /readyz, or a service dies, or we are told to stop."""

    def alive() -> bool:
        return not stopping() and all(c.poll() is None for c in children.values())

    if wait_until_ok(f"{base_url}/readyz", timeout=60, alive=alive, interval=0.1):
        return True
    dead = [n for n, c in children.items() if c.poll() is not None]
    if dead:
        print(f"hookbus: {', '.join(dead)} exited during start-up; see above", flush=True)
    elif not stopping():
        print("hookbus: the receiver did not become ready within 60 s", flush=True)
    return False


# Beyond the executor's own grace: the other services' shutdown, and recording the ended
# jobs.
_STOP_MARGIN = 15.0


def stop_wait(executor: ExecutorSettings) -> float:
    """How long the services get to stop before they are killed: enough for the executor
    to give running jobs their shutdown grace, end them and record them interrupted (a
    killed executor would leave them running, their end unknown)."""
    return executor.shutdown_grace_seconds + executor.kill_grace_seconds + _STOP_MARGIN


def port_free(host: str, port: int) -> bool:
    """Whether ``host``:``port`` can be listened on now (a quick look; not a reservation)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError:
        return False
    return True


# The services that hold the key ring of run-time endpoints' signing secrets: the
# dispatcher opens them to sign (the CLI, which writes them, finds the key through up.json).
KEY_HOLDERS = frozenset({"dispatcher"})
KEY_FILE = "secrets.key"


def service_env(env: dict[str, str], service: str, key_file: Path | None) -> dict[str, str]:
    """``env`` for one service: the secrets key (the operator's, else ``key_file``) only
    for the services that need it."""
    keys = (sealing.KEY_ENV, sealing.KEY_FILE_ENV)
    out = {k: v for k, v in env.items() if k not in keys}
    if service in KEY_HOLDERS:
        given = {k: env[k] for k in keys if env.get(k)}
        if given:
            out.update(given)
        elif key_file is not None:
            out[sealing.KEY_FILE_ENV] = str(key_file)
    return out


def secrets_key(data_dir: Path, env: dict[str, str]) -> Path | None:
    """The key file made in ``data_dir`` on first start (kept across restarts), unless the
    environment gives a key; raises ``ConfigError`` naming the setting for a bad one."""
    if sealing.load(env) is not None:
        return None
    path = sealing.ensure_key_file(data_dir / KEY_FILE)
    sealing.load({sealing.KEY_FILE_ENV: str(path)})  # a damaged file: say so now
    return path


class AlreadyRunning(Exception):
    """Another ``hookbus up`` holds this data directory."""


def hold_data_dir(data_dir: Path) -> int:
    """Take ``data_dir``'s lock for as long as this process lives; returns its fd.

    The kernel releases the lock when the process ends, however it ends, so a crashed
    instance never blocks the next one. The lock file holds the owner's pid, for the
    message another instance prints; it is never deleted (another process may be
    waiting on that very file).
    """
    fd = os.open(data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(owner) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def cmd_up(args: argparse.Namespace) -> int:
    config = args.config or (str(p) if (p := default_config_path(os.environ)) else None)
    quick = None
    if config is None:  # WEBHOOK_SECRET and ACTION_SCRIPT (or flags) build one
        try:
            quick = quickstart.plan(args, os.environ)
        except quickstart.QuickstartError as exc:
            print(f"hookbus: {exc}", file=sys.stderr)
            return 2
        if quick is not None:
            config = str(quickstart.write(quick, Path(args.data_dir)))
    elif args.github_secret_env or args.run:
        print(f"hookbus: --github-secret-env and --run are ignored: {config} is used", flush=True)
    inst = installation(argparse.Namespace(config=config, data_dir=None))
    settings = inst.receiver
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold_data_dir(data_dir)
    except AlreadyRunning as exc:
        # Starting anyway would fail on busy ports and, stopping, take the running
        # instance's servers and state file with it: refuse before touching anything.
        who = f"pid {exc}" if str(exc).isdigit() else "another process"
        print(
            f"hookbus: hookbus up is already running with data in {data_dir} ({who});"
            " stop it first, or use another --data-dir",
            file=sys.stderr,
        )
        return 1
    nats: NatsServer | NatsCluster = NatsServer(
        data_dir / "nats", port=args.nats_port, log_file=data_dir / "nats.log"
    )
    if args.nats_cluster:  # the first node on --nats-port; the stream replicated on every node
        nats = NatsCluster(
            data_dir / "nats-cluster", args.nats_cluster, port=args.nats_port, log_dir=data_dir
        )
    pg = Postgres(data_dir / "postgres")
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False
    wrote_state = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"hookbus: data in {data_dir}", flush=True)
        nats.start()
        print(f"hookbus: NATS JetStream on {nats.url}", flush=True)
        db_url = pg.start()
        print("hookbus: Postgres up (embedded, unix socket)", flush=True)
        env = {
            **os.environ,
            "HOOKBUS_NATS__URL": nats.url,
            "HOOKBUS_DATABASE__URL": db_url,
            "HOOKBUS_LOG__FORMAT": os.environ.get("HOOKBUS_LOG__FORMAT", "text"),
        }
        if config:
            env["HOOKBUS_CONFIG"] = str(Path(config).resolve())
        state: dict[str, object] = {
            "pid": os.getpid(),
            "nats_url": nats.url,
            "database_url": db_url,
        }
        # Run-time endpoints' signing secrets are sealed under this key: the dispatcher
        # gets it, and `hookbus endpoints` run beside us finds it in up.json.
        key_file = secrets_key(data_dir, env)
        if key_file is not None:
            state["secrets_key_file"] = str(key_file)
        if args.nats_cluster:  # commands run beside us use it too (cli/config.py)
            env["HOOKBUS_NATS__STREAM_REPLICAS"] = state["stream_replicas"] = str(args.nats_cluster)
        (data_dir / "up.json").write_bytes(msgspec.json.encode(state))
        wrote_state = True
        # Migrate once here so the services start against a ready schema.
        asyncio.run(migrate(msgspec.structs.replace(
            settings.database, url=db_url)))  # fmt: skip
        services = list(SERVICES)
        api = inst.api.api
        if not port_free(api.host, api.port):
            # Another `hookbus up` (or anything else) has it: run the rest without the
            # operator API rather than stop everything when it cannot listen.
            services.remove("api")
            print(
                f"hookbus: port {api.port} is in use; the operator API is not started"
                " (set api.port)",
                flush=True,
            )
        for service in services:
            children[service] = subprocess.Popen(
                service_argv(service, None), env=service_env(env, service, key_file)
            )
        host = settings.receiver.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
            host = "127.0.0.1"
        url = f"http://{host}:{settings.receiver.port}"
        if not _wait_ready(url, children, lambda: stopping):
            return 1
        sources = ", ".join(settings.sources) or "(none configured)"
        print(f"hookbus: send webhooks to {url}/hooks/<source>   sources: {sources}", flush=True)
        if quick is not None and config is not None:
            for line in quickstart.announce(quick, url, Path(config)):
                print(line, flush=True)
        if "api" in children:
            api_host = "127.0.0.1" if api.host in ("0.0.0.0", "::") else api.host  # noqa: S104
            print(
                f"hookbus: dashboard and operator API at http://{api_host}:{api.port}/"
                " (sign in with a token from `hookbus tokens create`)",
                flush=True,
            )
        print("hookbus: Ctrl-C stops everything", flush=True)
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"hookbus: {name} exited with {child.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    except (EmbeddedError, ConfigError) as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_wait(inst.executor.executor)
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if wrote_state:  # only the instance that wrote it, which holds the lock
            (data_dir / "up.json").unlink(missing_ok=True)
        pg.stop()
        nats.stop()
        os.close(lock)  # the next `hookbus up` may start only once everything is down
        print("hookbus: stopped", flush=True)
    failed = [n for n, c in children.items() if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run everything on embedded NATS and Postgres")
    up.add_argument("--nats-port", type=int, default=4222)
    up.add_argument(
        "--nats-cluster",
        type=int,
        choices=(3, 5),
        metavar="N",
        help="run N nats-servers clustered on loopback (3 or 5), the stream with N replicas",
    )
    # Without a config file: serve GitHub pushes running a script (cli/quickstart.py).
    up.add_argument(
        "--github-secret-env",
        metavar="NAME",
        help="with no config file: the variable holding the GitHub webhook secret"
        f" (default: {quickstart.SECRET_ENV} when set)",
    )
    up.add_argument(
        "--run",
        metavar="PATH",
        help="with no config file: the script each GitHub push runs"
        f" (default: ${quickstart.SCRIPT_ENV})",
    )
    up.set_defaults(func=cmd_up)
