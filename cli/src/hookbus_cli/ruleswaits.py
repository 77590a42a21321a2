"""``hookbus rules waits``: the open waits of rules over several events — which rule, which
key, which of its events arrived, and when the wait expires."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import msgspec

from hookbus_router.waits import WaitRow, open_waits

from .config import core_settings
from .database import connection


class Listed(msgspec.Struct, frozen=True, kw_only=True):
    rule: str
    key: str
    arrived: dict[str, str]
    missing: list[int]
    first_seen: datetime
    expires_at: datetime


def listed(row: WaitRow) -> Listed:
    return Listed(
        rule=row.rule,
        key=row.key,
        arrived=dict(sorted(row.arrived.items())),
        missing=[i for i in range(row.of) if str(i) not in row.arrived],
        first_seen=row.first_seen,
        expires_at=row.expires_at,
    )


def _left(expires: datetime, now: datetime) -> str:
    seconds = int((expires - now).total_seconds())
    if seconds <= 0:
        return "expired (recorded at the next sweep)"
    if seconds < 120:
        return f"in {seconds}s"
    if seconds < 7200:
        return f"in {seconds // 60}m"
    return f"in {seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_rules_waits(args: argparse.Namespace) -> int:
    settings = core_settings(args)

    async def run() -> list[WaitRow]:
        async with connection(settings.database, migrate=True) as conn:
            rows = await open_waits(conn, limit=args.limit)
        return [r for r in rows if args.rule is None or r.rule == args.rule]

    rows = [listed(r) for r in asyncio.run(run())]
    if args.json:
        for item in rows:
            sys.stdout.buffer.write(msgspec.json.encode(item) + b"\n")
        return 0
    if not rows:
        print("no open waits")
        return 0
    now = datetime.now(UTC)
    for item in rows:
        have = len(item.arrived)
        print(
            f"{item.rule}  key {item.key!r}  {have} of {have + len(item.missing)} events"
            f"  expires {_left(item.expires_at, now)}"
        )
        for part, event_id in item.arrived.items():
            print(f"  events[{part}]  {event_id}")
        for part_index in item.missing:
            print(f"  events[{part_index}]  (waiting)")
    return 0


def register(rules_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    waits = rules_sub.add_parser(
        "waits",
        help="open waits of rules over several events",
        description="List the open waits of rules over several events: the rule, the key, the"
        " events that arrived (by part) and the ones still missing, and when the wait"
        " expires; the ones expiring soonest first.",
    )
    waits.add_argument("--rule", help="only this rule's waits")
    waits.add_argument("--limit", type=int, default=200, help="at most this many")
    waits.add_argument("--json", action="store_true", help="one JSON object per wait")
    waits.set_defaults(func=cmd_rules_waits)
