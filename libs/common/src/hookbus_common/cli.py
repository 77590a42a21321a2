"""``hookbus``: the one command for people — run, serve, migrate, read the log."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import admincli, db, eventlog, readmodels
from .embedded import EmbeddedError, NatsServer, Postgres, wait_until_ok
from .eventlog import LoggedEvent
from .settings import ConfigError, DatabaseSettings, Settings, default_config_path, load_settings

SERVICES = ("receiver", "router", "executor", "dispatcher")


def _running_up(data_dir: str | None) -> dict[str, str]:
    """Where a ``hookbus up`` of this directory serves NATS and Postgres, if one runs."""
    state = Path(data_dir or ".hookbus") / "up.json"
    try:
        info: dict[str, Any] = msgspec.json.decode(state.read_bytes())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, msgspec.DecodeError):
        return {}
    return {"HOOKBUS_NATS__URL": info["nats_url"], "HOOKBUS_DATABASE__URL": info["database_url"]}


def _settings(args: argparse.Namespace) -> Settings:
    env: dict[str, str] = dict(os.environ)
    if not any(k in env for k in ("HOOKBUS_DATABASE__URL", "DATABASE_URL")):
        # Commands run beside `hookbus up` find its embedded servers without set-up.
        env = {**_running_up(getattr(args, "data_dir", None)), **env}
    try:
        return load_settings(args.config, env)
    except ConfigError as exc:
        raise SystemExit(f"hookbus: config error: {exc}") from None


# ------------------------------------------------------------------------ serve


def _service_argv(service: str, config: str | None) -> list[str]:
    argv = [sys.executable, "-m", f"hookbus_{service}"]
    return [*argv, "--config", config] if config else argv


def cmd_serve(args: argparse.Namespace) -> int:
    _settings(args)  # fail here, with the key named, rather than in the child
    argv = _service_argv(args.service, args.config)
    try:
        __import__(f"hookbus_{args.service}")
    except ImportError:
        raise SystemExit(
            f"hookbus: the {args.service} service is not installed"
            f" (uv sync --package hookbus-{args.service})"
        ) from None
    os.execv(argv[0], argv)  # noqa: S606 (argv built from a fixed choice)


# --------------------------------------------------------------------------- up


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


def cmd_up(args: argparse.Namespace) -> int:
    config = args.config or (str(p) if (p := default_config_path(os.environ)) else None)
    settings = _settings(argparse.Namespace(config=config, data_dir=None))
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(data_dir / "nats", port=args.nats_port, log_file=data_dir / "nats.log")
    pg = Postgres(data_dir / "postgres")
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

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
        state = {"pid": os.getpid(), "nats_url": nats.url, "database_url": db_url}
        (data_dir / "up.json").write_bytes(msgspec.json.encode(state))
        # Migrate once here so the services start against a ready schema.
        asyncio.run(_migrate(msgspec.structs.replace(
            settings.database, url=db_url)))  # fmt: skip
        for service in SERVICES:
            children[service] = subprocess.Popen(_service_argv(service, None), env=env)
        host = settings.receiver.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
            host = "127.0.0.1"
        url = f"http://{host}:{settings.receiver.port}"
        if not _wait_ready(url, children, lambda: stopping):
            return 1
        sources = ", ".join(settings.sources) or "(none configured)"
        print(f"hookbus: send webhooks to {url}/hooks/<source>   sources: {sources}", flush=True)
        print("hookbus: Ctrl-C stops everything", flush=True)
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"hookbus: {name} exited with {child.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    except EmbeddedError as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        (data_dir / "up.json").unlink(missing_ok=True)
        pg.stop()
        nats.stop()
        print("hookbus: stopped", flush=True)
    failed = [n for n, c in children.items() if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


# ---------------------------------------------------------------------- migrate


async def _migrate(settings: DatabaseSettings) -> list[str]:
    conn = await db.connect_once(settings)
    try:
        return await db.migrate(conn, settings.schema)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    applied = asyncio.run(_migrate(settings.database))
    print("\n".join(f"applied {n}" for n in applied) or "schema is up to date")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> int:
        async with db.open_pool(settings.database) as pool, pool.acquire() as conn:
            return await readmodels.rebuild(conn)

    print(f"read models rebuilt from {asyncio.run(run())} events")
    return 0


# ----------------------------------------------------------------------- events


def summary(e: LoggedEvent) -> str:
    """One line saying what an event is about, for people reading the log."""
    d: dict[str, Any] = msgspec.json.decode(e.event.data) if e.event.data else {}
    short = e.event.type.removeprefix("io.hookbus.").rsplit(".", 1)[0]
    match short:
        case "webhook.received":
            where = d.get("repository") or ""
            ref = d.get("branch") or d.get("tag")
            return f"{d.get('source')} {d.get('event_type')} {where}{'@' + ref if ref else ''}"
        case "webhook.routed":
            return f"matched: {', '.join(d.get('matched', [])) or 'nothing'}"
        case "job.requested":
            return f"{d.get('job_id')} {d.get('kind')} (rule {d.get('rule')})"
        case "job.started":
            return f"{d.get('job_id')} attempt {d.get('attempt')}"
        case "job.succeeded" | "job.failed":
            if d.get("timed_out"):
                how = "timed out"
            elif d.get("error"):
                how = str(d["error"])
            elif d.get("signal") is not None:
                how = f"killed by signal {d['signal']}"
            else:
                how = f"exit {d.get('exit_code')}"
            return f"{d.get('job_id')} {how} in {d.get('duration_ms', 0):.0f} ms"
        case s if s.startswith("delivery."):
            status = d.get("status_code") or d.get("error") or ""
            return f"{d.get('delivery_id')} {d.get('url')} {status}".rstrip()
        case "message.deadlettered":
            return f"{d.get('service')}: {d.get('error')}"
        case s if s.startswith("partner."):
            return f"{d.get('partner_id')} {d.get('name') or d.get('status') or ''}".rstrip()
    return ""


def json_line(e: LoggedEvent) -> bytes:
    """The event as one line of CloudEvents JSON: a payload kept as the sender formatted it
    may hold newlines, which a JSON-lines reader must not see."""
    return msgspec.json.encode(msgspec.json.decode(e.payload())) + b"\n"


def _depths(rows: Sequence[LoggedEvent]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for r in rows:
        cause = r.event.causationid
        depth[r.event.id] = depth.get(cause, -1) + 1 if cause else 0
    return depth


def _print_events(rows: Sequence[LoggedEvent], *, tree: bool, verbose: bool) -> None:
    depth = _depths(rows) if tree else {}
    for r in rows:
        short = r.event.type.removeprefix("io.hookbus.")
        indent = "  " * depth.get(r.event.id, 0)
        ts = r.event.time.strftime("%H:%M:%S.%f")[:-3]
        print(f"{r.seq:>7} {ts} {indent}{short:<28} {r.event.id}  {summary(r)}")
        if verbose:
            data = msgspec.json.decode(r.event.data)
            if isinstance(data, dict) and data.get("output"):
                for line in str(data["output"]).rstrip().splitlines():
                    print(f"{'':>20}{indent}| {line}")


def cmd_events(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> list[LoggedEvent]:
        conn = await db.connect_once(settings.database)
        try:
            await conn.execute(f'SET search_path TO "{settings.database.schema}"')
            if args.chain:
                return await eventlog.chain(conn, args.chain)
            return await eventlog.recent(conn, limit=args.limit, type_prefix=args.type)
        finally:
            await conn.close()

    rows = asyncio.run(run())
    if args.json:
        for r in rows:
            sys.stdout.buffer.write(json_line(r))
        return 0
    if args.chain and not rows:
        print(f"no event with id {args.chain}", file=sys.stderr)
        return 1
    _print_events(rows, tree=bool(args.chain), verbose=args.verbose)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"config ok: {len(settings.sources)} sources, {len(settings.rules)} rules, "
          f"prefix {settings.prefix!r}")  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every verification scheme against published vectors (no config needed)."""
    try:  # the receiver is a service: imported here, only when this command runs
        from hookbus_receiver.signatures import selftest
    except ImportError:
        print("hookbus: the receiver is not installed (uv sync --package hookbus-receiver)")
        return 2
    rows = selftest()
    for name, passed, detail in rows:
        print(f"{'PASS' if passed else 'FAIL'}  {name:<20} {detail}")
    failed = [name for name, passed, _ in rows if not passed]
    print(f"{len(rows) - len(failed)} of {len(rows)} schemes passed")
    return 1 if failed else 0


# ------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hookbus", description=__doc__)
    p.add_argument(
        "--config", "-c", help="TOML config file (default: $HOOKBUS_CONFIG or ./hookbus.toml)"
    )
    p.add_argument(
        "--data-dir", default=".hookbus", help="where `hookbus up` keeps NATS and Postgres data"
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on embedded NATS and Postgres")
    up.add_argument("--nats-port", type=int, default=4222)
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("rebuild", help="rebuild read models from the event log").set_defaults(
        func=cmd_rebuild
    )

    events = sub.add_parser("events", help="list recent events, or one webhook's chain")
    events.add_argument("--chain", metavar="ID", help="everything caused by the webhook of ID")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--type", help="only types starting with this (io.hookbus.job.)")
    events.add_argument("--json", action="store_true", help="CloudEvents JSON, one a line")
    events.add_argument("--verbose", "-v", action="store_true", help="show job output")
    events.set_defaults(func=cmd_events)

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("check", help="validate the config").set_defaults(func=cmd_config_check)

    verify = sub.add_parser("verify", help="check the signature schemes")
    verify.add_argument(
        "--selftest", action="store_true", required=True, help="against the published vectors"
    )
    verify.set_defaults(func=cmd_verify)

    admincli.register(sub, _settings)  # partners, webhook-url
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
