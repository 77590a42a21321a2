"""``hookbus partners …``: senders with their own webhook URL, and what to hand them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from hookbus_common.events import PartnerValidation
from hookbus_receiver import partnerstore as partners
from hookbus_receiver.partnerstore import Partner, PartnerError

from .config import ReceiverAddress, receiver_address
from .database import connection

Work = Callable[[asyncpg.Connection, ReceiverAddress], Awaitable[str]]


def run(args: argparse.Namespace, work: Work) -> int:
    """Run one piece of work on a migrated connection; print its text or its error."""
    settings = receiver_address(args)

    async def go() -> str:
        async with connection(settings.database, migrate=True) as conn:
            return await work(conn, settings)

    try:
        out = asyncio.run(go())
    except PartnerError as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _validation_from(args: argparse.Namespace) -> PartnerValidation | None:
    """The validation config the arguments describe; None when they describe none."""
    if getattr(args, "no_validation", False):
        return PartnerValidation()
    schema: Any = None
    if args.schema:
        try:
            schema = msgspec.json.decode(Path(args.schema).read_bytes())
        except OSError as exc:
            raise PartnerError(f"cannot read {args.schema}: {exc.strerror}") from None
        except msgspec.DecodeError as exc:
            raise PartnerError(f"{args.schema} is not JSON: {exc}") from None
    if not args.require and schema is None:
        return None
    return partners.parse_validation(args.require or [], schema)


# --------------------------------------------------------------------- partners


def _add(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        p, token = await partners.create(
            conn,
            s.prefix,
            name=args.name,
            description=args.description,
            tenant=args.tenant,
            validation=_validation_from(args),
            status="INACTIVE" if args.inactive else "ACTIVE",
        )
        return integration_guide(s, p, token)

    return work


def _rotate(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        p, token = await partners.rotate(conn, s.prefix, args.partner)
        return "The previous URL no longer works.\n\n" + integration_guide(s, p, token)

    return work


def _list(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        rows = await partners.list_partners(conn, include_deleted=args.all)
        return "\n".join(list_line(p) for p in rows) or "no partners"

    return work


def _show(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        return show(await partners.get(conn, args.partner))

    return work


def _status(
    status: str,
) -> Callable[[argparse.Namespace], Work]:
    def make(args: argparse.Namespace) -> Work:
        async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
            p = await partners.set_status(conn, s.prefix, args.partner, status)
            return f"partner {p.partner_id} ({p.name}) is {p.status}"

        return work

    return make


def _delete(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        p = await partners.delete(conn, s.prefix, args.partner)
        return f"partner {p.partner_id} ({p.name}) deleted; its URL no longer works"

    return work


def _update(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        p = await partners.update(
            conn,
            s.prefix,
            args.partner,
            name=args.name,
            description=args.description,
            tenant=args.tenant,
            validation=_validation_from(args),
        )
        return show(p)

    return work


def _validation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--require",
        action="append",
        metavar="PATH",
        help="a dotted JSON path the body must have (order.id); repeat for more",
    )
    p.add_argument("--schema", metavar="FILE", help="a JSON Schema file the body must satisfy")


# -------------------------------------------------------------------- for people


def webhook_url(settings: ReceiverAddress, token: str) -> str:
    return f"{settings.receiver.base_url()}{partners.WEBHOOK_PATH}{token}"


def describe_validation(v: PartnerValidation) -> list[str]:
    lines = []
    if v.required:
        lines.append(f"required fields: {', '.join(v.required)}")
    if v.schema is not None:
        lines.append(f"JSON Schema: {msgspec.json.encode(v.schema).decode()}")
    return lines or ["none (any JSON object is accepted)"]


# A fresh id each time the example runs: uuidgen (macOS, most Linux), else the kernel's.
IDEMPOTENCY_KEY_EXAMPLE = "$(uuidgen 2>/dev/null || cat /proc/sys/kernel/random/uuid)"


def integration_guide(settings: ReceiverAddress, partner: Partner, token: str) -> str:
    """What to hand the partner: their URL (shown only now), a curl example, the answers."""
    url = webhook_url(settings, token)
    checks = "\n".join(f"  - {line}" for line in describe_validation(partner.validation))
    return f"""\
Partner {partner.partner_id} ({partner.name}) — status {partner.status}, tenant {partner.tenant}

Webhook URL — the token in it is the partner's credential; it is shown only now
(`hookbus partners rotate {partner.partner_id}` makes a new one):

  {url}

Send each event as one JSON object:

  curl -i -X POST '{url}' \\
    -H 'Content-Type: application/json' \\
    -H "Idempotency-Key: {IDEMPOTENCY_KEY_EXAMPLE}" \\
    -H 'X-Event-Type: order.created' \\
    --data '{{"order": {{"id": "A-1001"}}}}'

Idempotency-Key: new for each event, the same on its retries; a key seen before is not recorded again.

Checks before an event is accepted:
{checks}

Answers:
  202 {{"id": "evt_…"}}                    recorded
  200 {{"id": "evt_…", "duplicate": true}}  this Idempotency-Key (or webhook-id) was recorded before
  400 / 415 / 413                         not a JSON object / not JSON / too large
  422 {{"error": "validation_failed", …}}   the checks above failed; nothing was recorded
  404                                     unknown, inactive or revoked URL
  503 with Retry-After                    not recorded; send it again later
"""


def list_line(p: Partner) -> str:
    status = "DELETED" if p.deleted else p.status
    return f"{p.partner_id}  {status:<9}  {p.tenant:<10}  {p.created_at:%Y-%m-%d %H:%M}  {p.name}"


def show(p: Partner) -> str:
    lines = [
        f"id:          {p.partner_id}",
        f"name:        {p.name}",
        f"description: {p.description}",
        f"status:      {p.status}",
        f"tenant:      {p.tenant}",
        f"source:      {p.source}  (webhooks are recorded as webhook.received from this source)",
        f"created:     {p.created_at.isoformat()}",
        f"modified:    {p.modified_at.isoformat()}",
    ]
    if p.deleted_at is not None:
        lines.append(f"deleted:     {p.deleted_at.isoformat()}")
    lines.append("validation:")
    lines.extend(f"  {line}" for line in describe_validation(p.validation))
    lines.append("URL:         shown only when created or rotated")
    return "\n".join(lines)


# ---------------------------------------------------------------------- wiring


def register(sub: Any) -> None:
    """Add the ``partners`` commands to the ``hookbus`` parser."""

    def command(
        parent: Any,
        name: str,
        help: str,
        make: Callable[[argparse.Namespace], Work],
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help)

        def func(args: argparse.Namespace) -> int:
            try:
                work = make(args)
            except PartnerError as exc:
                print(f"hookbus: {exc}", file=sys.stderr)
                return 1
            return run(args, work)

        p.set_defaults(func=func)
        return p

    ptn = sub.add_parser("partners", help="partners: senders with their own webhook URL")
    ps = ptn.add_subparsers(dest="partners_command", required=True)
    add = command(ps, "add", "create a partner and print its integration guide", _add)
    add.add_argument("name")
    add.add_argument("--description", default="")
    add.add_argument("--tenant", default="default")
    add.add_argument("--inactive", action="store_true", help="create it INACTIVE")
    _validation_args(add)
    lst = command(ps, "list", "list partners", _list)
    lst.add_argument("--all", action="store_true", help="include deleted partners")
    for name, help, make in (
        ("show", "show one partner (by id or name)", _show),
        ("rotate", "give a partner a new URL; the old one stops working", _rotate),
        ("suspend", "refuse its webhooks (404) until activated", _status("SUSPENDED")),
        ("deactivate", "mark it INACTIVE (its webhooks get 404)", _status("INACTIVE")),
        ("activate", "accept its webhooks again", _status("ACTIVE")),
        ("delete", "soft-delete it; its URL stops working for good", _delete),
    ):
        command(ps, name, help, make).add_argument("partner", help="partner id or name")
    upd = command(ps, "update", "change name, description, tenant or validation", _update)
    upd.add_argument("partner", help="partner id or name")
    upd.add_argument("--name")
    upd.add_argument("--description")
    upd.add_argument("--tenant")
    upd.add_argument("--no-validation", action="store_true", help="remove every check")
    _validation_args(upd)
