"""``hookbus endpoints list | show | disable | enable``: the configured endpoints and their
health; enabling with ``--recover-since`` requests again what died while one was down."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.eventlog import Pending
from hookbus_dispatcher import config as dispatcher

from . import deliveries, dlq
from .config import core_settings, environment, fail
from .database import connection

SOURCE = "/hookbus/cli"


class EndpointView(msgspec.Struct, kw_only=True):
    """An endpoint as people see it: its config (without secrets) and its health."""

    name: str
    configured: bool = True
    url: str | None = None
    tenant: str = "default"
    events: list[str] = []
    description: str = ""
    state: str = "enabled"
    reason: str = ""
    changed_by: str | None = None
    changed_at: datetime | None = None
    failing_since: datetime | None = None


def _configured(args: argparse.Namespace) -> dict[str, dispatcher.Endpoint]:
    try:
        return dispatcher.load_unresolved(args.config, environment(args)).endpoints
    except ConfigError as exc:
        fail(exc)


async def _views(
    conn: asyncpg.Connection, configured: dict[str, dispatcher.Endpoint]
) -> list[EndpointView]:
    rows = await conn.fetch(
        "SELECT coalesce(s.endpoint, f.endpoint) AS endpoint, s.disabled, s.reason,"
        " s.changed_by, s.changed_at, f.since"
        " FROM endpoint_state s FULL JOIN endpoint_failing f ON f.endpoint = s.endpoint"
    )
    known = {r["endpoint"]: r for r in rows}
    out = []
    for name in sorted(set(configured) | set(known)):
        ep = configured.get(name)
        r: Any = known.get(name)
        view = EndpointView(name=name, configured=ep is not None)
        if ep is not None:
            view.url, view.tenant, view.events = ep.url, ep.tenant, list(ep.events)
            view.description = ep.description
        if r is not None:
            view.state = "disabled" if r["disabled"] else "enabled"
            view.reason = r["reason"] or ""
            view.changed_by, view.changed_at = r["changed_by"], r["changed_at"]
            view.failing_since = r["since"]
        out.append(view)
    return out


def _table(views: list[EndpointView]) -> str:
    head = ("NAME", "STATE", "TENANT", "URL", "NOTE")
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
        lines.append((v.name, v.state, v.tenant, v.url or "-", note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        (
            "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        ).rstrip()
        for line in lines
    )


def _show(v: EndpointView) -> str:
    lines = [
        f"endpoint:    {v.name}{'' if v.configured else ' (not configured)'}",
        f"state:       {v.state}",
    ]
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
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    configured = _configured(args)
    settings = core_settings(args)

    async def run() -> list[EndpointView]:
        async with connection(settings.database, migrate=True) as conn:
            return await _views(conn, configured)

    views = asyncio.run(run())
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
                data: ev.EndpointStateChanged
                if enable:
                    data = ev.EndpointEnabled(
                        endpoint=v.name, reason=args.reason or "", by=by, tenant=v.tenant,
                        recover_since=since,
                    )  # fmt: skip
                else:
                    data = ev.EndpointDisabled(
                        endpoint=v.name, reason=args.reason or f"disabled by {by or 'hand'}",
                        by=by, tenant=v.tenant,
                    )  # fmt: skip
                event = ev.make_event(data, source=SOURCE, subject=v.name, tenant=v.tenant)
                async with conn.transaction():
                    inserted, _ = await eventlog.insert(conn, settings.prefix, [Pending(event)])
                    await readmodels.project(conn, inserted)
                    # The failure streak starts again from here, either way.
                    await conn.execute("DELETE FROM endpoint_failing WHERE endpoint = $1", v.name)
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("endpoints", help="configured endpoints and their health")
    cmds = p.add_subparsers(dest="endpoints_command", required=True)
    ls = cmds.add_parser("list", help="every endpoint and whether it is enabled")
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
