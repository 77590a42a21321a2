"""``hookbus endpoints …``: the endpoints of the config file and those managed at run time
(``add | update | rotate-secret | pause | resume | delete``, ``reseal`` their stored
secrets), and their health (``list | show | disable | enable``); enabling with
``--recover-since`` requests again what died while one was down."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from hookbus_api import endpointsview
from hookbus_common import sealing
from hookbus_common.errors import ConfigError
from hookbus_common.sealing import Keyring, SealingError
from hookbus_dispatcher import config as dispatcher
from hookbus_dispatcher import endpointstore as store
from hookbus_dispatcher.endpointstore import EndpointError, RuntimeEndpoint

from . import deliveries, dlq
from .config import core_settings, environment, fail
from .database import connection

SOURCE = "/hookbus/cli"


class EndpointView(msgspec.Struct, kw_only=True):
    """An endpoint as people see it: its config (without secrets) and its health."""

    name: str
    configured: bool = True
    # "config" ([endpoints.<name>] in the file) or "runtime" (hookbus endpoints add).
    kind: str = "config"
    endpoint_id: str | None = None
    url: str | None = None
    tenant: str = "default"
    events: list[str] = []
    description: str = ""
    state: str = "enabled"
    reason: str = ""
    changed_by: str | None = None
    changed_at: datetime | None = None
    failing_since: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _configured(args: argparse.Namespace) -> dict[str, dispatcher.Endpoint]:
    try:
        return dispatcher.load_unresolved(args.config, environment(args)).endpoints
    except ConfigError as exc:
        fail(exc)


async def _views(
    conn: asyncpg.Connection, configured: dict[str, dispatcher.Endpoint]
) -> list[EndpointView]:
    known = await endpointsview.state_rows(conn)
    runtime = {e.name: e for e in await store.list_all(conn)}
    out = []
    for name in sorted(set(configured) | set(known) | set(runtime)):
        ep = configured.get(name)
        rt = runtime.get(name) if ep is None else None
        r: Any = known.get(name)
        view = EndpointView(name=name, configured=ep is not None or rt is not None)
        if ep is not None:
            view.url, view.tenant, view.events = ep.url, ep.tenant, list(ep.events)
            view.description = ep.description
        if rt is not None:
            view.kind, view.endpoint_id = "runtime", rt.endpoint_id
            view.url, view.tenant, view.events = rt.url, rt.tenant, list(rt.events)
            view.description, view.state = rt.description, "paused" if rt.paused else "enabled"
            view.changed_by, view.created_at, view.updated_at = (
                rt.created_by, rt.created_at, rt.updated_at,
            )  # fmt: skip
        if r is not None and (r["disabled"] or view.state != "paused"):
            view.state = "disabled" if r["disabled"] else "enabled"
            view.reason = r["reason"] or ""
            view.changed_by, view.changed_at = r["changed_by"], r["changed_at"]
            view.failing_since = r["since"]
        out.append(view)
    return out


def _table(views: list[EndpointView]) -> str:
    head = ("NAME", "STATE", "TENANT", "KIND", "EVENTS", "URL", "NOTE")
    lines = [head]
    for v in views:
        if v.state == "disabled":
            note = v.reason
        elif v.failing_since is not None:
            note = f"failing since {v.failing_since.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
        else:
            note = ""
        if not v.configured:
            note = ("not configured; " + note).rstrip("; ")
        events = ",".join(v.events) if v.configured else "-"
        lines.append((v.name, v.state, v.tenant, v.kind, events, v.url or "-", note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        (
            "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        ).rstrip()
        for line in lines
    )


def _show(v: EndpointView) -> str:
    where = " (added at run time)" if v.kind == "runtime" else ""
    lines = [
        f"endpoint:    {v.name}{where if v.configured else ' (not configured)'}",
        f"state:       {v.state}",
    ]
    if v.endpoint_id:
        lines.append(f"id:          {v.endpoint_id}")
    if v.reason:
        lines.append(f"reason:      {v.reason}")
    if v.changed_at is not None:
        by = f" by {v.changed_by}" if v.changed_by else " by the dispatcher"
        lines.append(f"changed:     {v.changed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}{by}")
    if v.failing_since is not None:
        lines.append(f"failing:     every attempt since {v.failing_since.isoformat()}")
    if v.configured:
        lines += [
            f"url:         {v.url}",
            f"tenant:      {v.tenant}",
            f"events:      {', '.join(v.events)}",
        ]
        if v.description:
            lines.append(f"description: {v.description}")
    if v.kind == "runtime":
        lines.append(
            "secret:      shown only when added or rotated (hookbus endpoints rotate-secret)"
        )
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    configured = _configured(args)
    settings = core_settings(args)

    async def run() -> list[EndpointView]:
        async with connection(settings.database, migrate=True) as conn:
            return await _views(conn, configured)

    views = asyncio.run(run())
    if args.tenant:
        views = [v for v in views if v.tenant == args.tenant]
    if args.json:
        for v in views:
            print(msgspec.json.encode(v).decode())
    elif views:
        print(_table(views))
    else:
        print("no endpoints are configured", file=sys.stderr)
    return 0


def _one(views: list[EndpointView], name: str) -> EndpointView | None:
    found = [v for v in views if v.name == name]
    if not found:
        print(f"hookbus: no endpoint named {name!r} is configured", file=sys.stderr)
        return None
    return found[0]


def cmd_show(args: argparse.Namespace) -> int:
    configured = _configured(args)
    settings = core_settings(args)

    async def run() -> list[EndpointView]:
        async with connection(settings.database, migrate=True) as conn:
            return await _views(conn, configured)

    v = _one(asyncio.run(run()), args.name)
    if v is None:
        return 1
    print(msgspec.json.encode(v).decode() if args.json else _show(v))
    return 0


def _change(enable: bool) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        configured = _configured(args)
        settings = core_settings(args)
        by = dlq.requester(args)
        since = deliveries.since_arg(getattr(args, "recover_since", None))

        async def run() -> int:
            async with connection(settings.database, migrate=True) as conn:
                v = _one(await _views(conn, configured), args.name)
                if v is None:
                    return 1
                # The same events as the operator API's disable/enable (endpointsview).
                event = endpointsview.state_event(
                    v.name, v.tenant, enable=enable, by=by, reason=args.reason, source=SOURCE,
                    recover_since=since,
                )  # fmt: skip
                await endpointsview.record_state(conn, settings.prefix, event)
                print(f"endpoint {v.name} {'enabled' if enable else 'disabled'}")
                if enable and since is not None:
                    dead = await deliveries.select(
                        conn, statuses=["dead"], endpoint=v.name, since=since, limit=None,
                        not_replayed=True,
                    )  # fmt: skip
                    new = await dlq.replay(
                        conn, settings.prefix, dead, requested_by=by,
                        reason=f"endpoint {v.name} enabled again",
                    )  # fmt: skip
                    print(
                        f"{len(new)} dead deliver{'y' if len(new) == 1 else 'ies'} requested again"
                    )
                return 0

        return asyncio.run(run())

    return cmd


# ------------------------------------------------------ endpoints at run time

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str, option: str) -> float:
    """Seconds in ``text`` ("90s", "30m", "24h", "7d", or seconds); exits naming ``option``."""
    m = _DURATION.match(text)
    if m is None:
        raise SystemExit(f"hookbus: {option}: {text!r} is not a duration (like 30m, 24h, 0)")
    return float(m.group(1)) * _UNIT[m.group(2) or "s"]


def _runtime_view(e: RuntimeEndpoint) -> EndpointView:
    return EndpointView(
        name=e.name, kind="runtime", endpoint_id=e.endpoint_id, url=e.url, tenant=e.tenant,
        events=list(e.events), description=e.description,
        state="paused" if e.paused else "enabled", changed_by=e.created_by,
        created_at=e.created_at, updated_at=e.updated_at,
    )  # fmt: skip


def _secret_text(name: str, secret: str) -> str:
    return (
        "signing secret (shown only now; `hookbus endpoints rotate-secret "
        f"{name}` makes a new one):\n\n  {secret}\n\n"
        "Receivers check each request's webhook-signature with it (Standard Webhooks)."
    )


def keyring(args: argparse.Namespace) -> Keyring:
    """The key ring secrets are sealed under (HOOKBUS_SECRETS_KEY or _FILE, or a running
    ``hookbus up``'s); exits naming the setting when there is none or it is malformed."""
    try:
        return sealing.require(environment(args))
    except ConfigError as exc:
        fail(exc)


def _managed(args: argparse.Namespace, work: Any) -> int:
    """Run one change to a run-time endpoint; print its text or JSON, or its error."""
    settings = core_settings(args)
    by = dlq.requester(args)

    async def run() -> tuple[str, Any]:
        async with connection(settings.database, migrate=True) as conn:
            result: tuple[str, Any] = await work(conn, settings.prefix, by)
            return result

    try:
        text, obj = asyncio.run(run())
    except (EndpointError, SealingError) as exc:  # sealing: a secret under a key not given
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(obj).decode() if args.json else text)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    configured = _configured(args)
    ring = keyring(args)

    async def work(conn: asyncpg.Connection, prefix: str, by: str | None) -> tuple[str, Any]:
        e, secret = await store.add(
            conn, prefix, name=args.name, url=args.url, tenant=args.tenant,
            events=args.events or ["*"], description=args.description or "", by=by,
            configured=list(configured), keyring=ring,
        )  # fmt: skip
        text = f"endpoint {e.name} added ({e.endpoint_id})\n\n{_show(_runtime_view(e))}\n\n"
        return text + _secret_text(e.name, secret), {"endpoint": _runtime_view(e), "secret": secret}

    return _managed(args, work)


def cmd_update(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, prefix: str, by: str | None) -> tuple[str, Any]:
        e = await store.update(
            conn, prefix, args.name, url=args.url, events=args.events,
            description=args.description, by=by,
        )  # fmt: skip
        return f"endpoint {e.name} updated\n\n{_show(_runtime_view(e))}", _runtime_view(e)

    return _managed(args, work)


def cmd_rotate(args: argparse.Namespace) -> int:
    window = duration(args.keep_old, "--keep-old")
    ring = keyring(args)

    async def work(conn: asyncpg.Connection, prefix: str, by: str | None) -> tuple[str, Any]:
        e, secret, until = await store.rotate(
            conn, prefix, args.name, window=window, by=by, keyring=ring
        )
        old = (
            "the previous secret no longer signs"
            if window == 0
            else f"the previous secret also signs until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
        text = f"endpoint {e.name}: new secret; {old}\n\n" + _secret_text(e.name, secret)
        return text, {"endpoint": _runtime_view(e), "secret": secret, "previous_valid_until": until}

    return _managed(args, work)


def _pause(paused: bool) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        async def work(conn: asyncpg.Connection, prefix: str, by: str | None) -> tuple[str, Any]:
            e, released = await store.set_paused(
                conn, prefix, args.name, paused, reason=getattr(args, "reason", None) or "", by=by
            )
            if paused:
                text = f"endpoint {e.name} paused: its deliveries wait until it is resumed"
            else:
                text = (
                    f"endpoint {e.name} resumed; {released} waiting"
                    f" deliver{'y' if released == 1 else 'ies'} go out now"
                )
            return text, _runtime_view(e)

        return _managed(args, work)

    return cmd


def cmd_delete(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, prefix: str, by: str | None) -> tuple[str, Any]:
        e = await store.delete(conn, prefix, args.name, by=by)
        text = f"endpoint {e.name} deleted; its secrets are gone and nothing more is sent to it"
        return text, _runtime_view(e)

    return _managed(args, work)


class Resealed(msgspec.Struct, kw_only=True):
    """What ``hookbus endpoints reseal`` did: the current key's id, and how many secrets
    it sealed that were in plaintext or under an older key."""

    key_id: str
    plaintext: int
    older_keys: int


def cmd_reseal(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    ring = keyring(args)

    async def run() -> Resealed:
        async with connection(settings.database, migrate=True) as conn:
            plain, older = await store.reseal(conn, ring)
        return Resealed(key_id=ring.current, plaintext=plain, older_keys=older)

    try:
        done = asyncio.run(run())
    except ConfigError as exc:  # a secret under a key not given, or altered
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(done).decode())
    else:
        print(
            f"{done.plaintext + done.older_keys} secrets sealed under key {done.key_id}"
            f" ({done.plaintext} were in plaintext, {done.older_keys} under older keys);"
            " every other secret already was"
        )
    return 0


def _register_managed(cmds: Any) -> None:
    def common(c: argparse.ArgumentParser) -> None:
        c.add_argument("name")
        c.add_argument("--by", metavar="NAME", help="who, for the log (default: $USER)")
        c.add_argument("--json", action="store_true", help="as one JSON object")

    add = cmds.add_parser("add", help="add an endpoint at run time; prints its signing secret")
    common(add)
    add.add_argument("url", help="where its deliveries are POSTed (http:// or https://)")
    add.add_argument("--tenant", default="default", help="whose endpoint it is (default: default)")
    add.add_argument(
        "--events", "-e", action="append", metavar="GLOB",
        help="event types it takes (invoice.*); repeat for more (default: every type)",
    )  # fmt: skip
    add.add_argument("--description", help="for people")
    add.set_defaults(func=cmd_add)
    upd = cmds.add_parser("update", help="change a run-time endpoint's URL, events, description")
    common(upd)
    upd.add_argument("--url")
    upd.add_argument(
        "--events", "-e", action="append", metavar="GLOB", help="replaces its event types"
    )
    upd.add_argument("--description")
    upd.set_defaults(func=cmd_update)
    rot = cmds.add_parser(
        "rotate-secret", help="give a run-time endpoint a new signing secret; prints it"
    )
    common(rot)
    rot.add_argument(
        "--keep-old", default="24h", metavar="DURATION",
        help="how long the previous secret also signs (default 24h; 0: stop at once)",
    )  # fmt: skip
    rot.set_defaults(func=cmd_rotate)
    pause = cmds.add_parser("pause", help="hold its deliveries (not lost) until resumed")
    common(pause)
    pause.add_argument("--reason", help="why, for the log")
    pause.set_defaults(func=_pause(True))
    resume = cmds.add_parser("resume", help="send to it again, what waited first")
    common(resume)
    resume.set_defaults(func=_pause(False))
    delete = cmds.add_parser("delete", help="delete a run-time endpoint and its secrets")
    common(delete)
    delete.set_defaults(func=cmd_delete)
    reseal = cmds.add_parser(
        "reseal",
        help="encrypt every stored signing secret under the current key"
        " (after an upgrade or a key rotation)",
    )
    reseal.add_argument("--json", action="store_true", help="as one JSON object")
    reseal.set_defaults(func=cmd_reseal)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "endpoints", help="endpoints (config file and run time), managed, and their health"
    )
    cmds = p.add_subparsers(dest="endpoints_command", required=True)
    ls = cmds.add_parser("list", help="every endpoint and whether it is enabled")
    ls.add_argument("--tenant", help="only this tenant's endpoints")
    ls.add_argument("--json", action="store_true", help="JSON, one endpoint a line")
    ls.set_defaults(func=cmd_list)
    sh = cmds.add_parser("show", help="one endpoint")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="as one JSON object")
    sh.set_defaults(func=cmd_show)
    for name, enable, text in (
        ("disable", False, "send nothing to it: its deliveries end dead at once"),
        ("enable", True, "send to it again"),
    ):
        c = cmds.add_parser(name, help=text)
        c.add_argument("name")
        c.add_argument("--by", metavar="NAME", help="who, for the log (default: $USER)")
        c.add_argument("--reason", help="why, for the log")
        if enable:
            c.add_argument(
                "--recover-since",
                metavar="TIME",
                help="also request again what died to it since TIME (ISO 8601, or 2h)",
            )
        c.set_defaults(func=_change(enable))
    _register_managed(cmds)
