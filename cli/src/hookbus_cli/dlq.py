"""``hookbus dlq list | show ID | replay …``: deliveries that ended without success (dead
after their last attempt, or failed for good), and sending them again.

A replay is a new delivery of the same request, linked to the one replayed: its id is
derived from the original and the replay, its ``webhook-id`` is the original message id
(so a receiver that already took the message can drop it), and a
``delivery.replayed`` event records who asked and why. The replay itself is
``hookbus_api.dlq``'s, which the operator API's replay buttons use too.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

import msgspec

from hookbus_api.dlq import CLI_SOURCE as SOURCE
from hookbus_api.dlq import DEAD_LETTERS, replay

from . import deliveries
from .config import core_settings
from .database import connection

__all__ = ["DEAD_LETTERS", "SOURCE", "register", "replay", "requester"]


def requester(args: argparse.Namespace) -> str | None:
    """Who asks: ``--by``, else the user running the command."""
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _plural(n: int) -> str:
    return f"{n} deliver{'y' if n == 1 else 'ies'}"


def cmd_list(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    since = deliveries.since_arg(args.since)

    async def run() -> list[deliveries.Delivery]:
        async with connection(settings.database) as conn:
            return await deliveries.select(
                conn,
                statuses=[args.status] if args.status else DEAD_LETTERS,
                endpoint=args.endpoint,
                tenant=args.tenant,
                since=since,
                limit=args.limit,
            )

    rows = asyncio.run(run())
    if args.json:
        for d in rows:
            print(msgspec.json.encode(d).decode())
    elif rows:
        print(deliveries.table(rows))
    else:
        print("the dead-letter queue is empty", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    bulk = any(getattr(args, k) for k in ("endpoint", "tenant", "since")) or args.all
    if bool(args.id) == bool(bulk):
        print(
            "hookbus: give a delivery ID, or select with --endpoint, --tenant, --since or --all",
            file=sys.stderr,
        )
        return 2
    since = deliveries.since_arg(args.since)

    async def run() -> int:
        async with connection(settings.database, migrate=True) as conn:
            chosen: list[deliveries.Delivery]
            if args.id:
                d = await deliveries.get(conn, args.id)
                if d is None:
                    print(f"hookbus: no delivery {args.id}", file=sys.stderr)
                    return 1
                if d.status not in DEAD_LETTERS:
                    print(
                        f"hookbus: {d.delivery_id} is {d.status}, not dead or failed:"
                        " nothing to replay",
                        file=sys.stderr,
                    )
                    return 1
                chosen = [d]
            else:
                # What was already replayed is left out: running this twice sends once.
                chosen = await deliveries.select(
                    conn,
                    statuses=DEAD_LETTERS,
                    endpoint=args.endpoint,
                    tenant=args.tenant,
                    since=since,
                    limit=None,
                    not_replayed=True,
                )
                print(f"{_plural(len(chosen))} to replay")
                if args.dry_run or not chosen:
                    if args.dry_run:
                        print("dry run: nothing replayed")
                    return 0
            new = await replay(
                conn, settings.prefix, chosen, requested_by=requester(args), reason=args.reason
            )
            if args.json:
                for old, fresh in zip(chosen, new, strict=True):
                    print(
                        msgspec.json.encode(
                            {"replay_of": old.delivery_id, "delivery_id": fresh}
                        ).decode()
                    )
            else:
                for old, fresh in zip(chosen, new, strict=True):
                    print(f"{old.delivery_id} → {fresh}")
                print(f"{_plural(len(new))} requested again")
            return 0

    return asyncio.run(run())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="dead letters: deliveries that ended without success")
    cmds = p.add_subparsers(dest="dlq_command", required=True)
    ls = cmds.add_parser("list", help="dead and failed deliveries, newest first")
    deliveries.add_filters(ls)
    ls.add_argument("--status", choices=DEAD_LETTERS, help="only dead, or only failed")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="JSON, one delivery a line")
    ls.set_defaults(func=cmd_list)
    sh = cmds.add_parser("show", help="one delivery and every attempt at it")
    sh.add_argument("id", metavar="ID", help="the delivery id (dlv_…)")
    sh.add_argument("--json", action="store_true", help="as one JSON object")
    sh.set_defaults(func=deliveries.cmd_show)
    rp = cmds.add_parser(
        "replay",
        help="request dead or failed deliveries again",
        description="Replay one delivery by ID, or every dead and failed one a selection"
        " takes (not replayed before). The count comes first; --dry-run stops there.",
    )
    rp.add_argument("id", metavar="ID", nargs="?", help="the delivery id (dlv_…)")
    deliveries.add_filters(rp)
    rp.add_argument("--all", action="store_true", help="every dead and failed delivery")
    rp.add_argument("--dry-run", action="store_true", help="count what is selected, and stop")
    rp.add_argument("--by", metavar="NAME", help="who asks, for the log (default: $USER)")
    rp.add_argument("--reason", help="why, for the log")
    rp.add_argument("--json", action="store_true", help="each replay as a line of JSON")
    rp.set_defaults(func=cmd_replay)
