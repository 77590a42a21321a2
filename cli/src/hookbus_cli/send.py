"""``hookbus send``: hand hookbus a message to deliver to a tenant's subscribed endpoints,
as ``POST /api/v1/messages`` does: recorded in the event log (``message.submitted``),
from where the outbox relay of any running hookbus service puts it on the bus."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec

from hookbus_api import messages
from hookbus_api.messages import MessageAccepted, SendMessage
from hookbus_common.errors import InvalidError

from . import dlq
from .config import core_settings
from .database import connection


def _payload(text: str) -> object:
    """``--data``: JSON text, ``@file`` or ``-`` (standard input)."""
    if text == "-":
        raw = sys.stdin.buffer.read()
    elif text.startswith("@"):
        try:
            raw = Path(text[1:]).read_bytes()
        except OSError as exc:
            raise InvalidError(f"--data: cannot read {text[1:]}: {exc.strerror}") from None
    else:
        raw = text.encode()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidError(f"--data: not JSON: {exc}") from None


def cmd_send(args: argparse.Namespace) -> int:
    try:
        msg = SendMessage(
            event_type=args.type,
            payload=_payload(args.data),
            tenant=args.tenant,
            idempotency_key=args.idempotency_key,
            ordering_key=args.ordering_key,
        )
        messages.check(msg)
    except InvalidError as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 2
    settings = core_settings(args)
    who = dlq.requester(args)

    async def run() -> MessageAccepted:
        async with connection(settings.database, migrate=True) as conn:
            accepted, _ = await messages.submit(
                conn, settings.prefix, msg, by=f"cli:{who}" if who else "cli"
            )
            return accepted

    accepted = asyncio.run(run())
    if args.json:
        print(msgspec.json.encode(accepted).decode())
    elif accepted.duplicate:
        print(f"{accepted.id} (recorded before under this idempotency key; not sent again)")
    else:
        print(accepted.id)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send", help="send a message to a tenant's endpoints subscribed to its event type"
    )
    p.add_argument("--tenant", default="default", help="whose endpoints (default: default)")
    p.add_argument("--type", required=True, metavar="EVENT_TYPE", help="like invoice.paid")
    p.add_argument(
        "--data", required=True, metavar="JSON", help="the payload: JSON, @file or - (stdin)"
    )
    p.add_argument("--idempotency-key", metavar="KEY", help="the same key: the same message")
    p.add_argument("--ordering-key", metavar="KEY", help="recorded with the message")
    p.add_argument("--by", metavar="NAME", help="who, for the log (default: $USER)")
    p.add_argument("--json", action="store_true", help="the answer as one JSON object")
    p.set_defaults(func=cmd_send)
