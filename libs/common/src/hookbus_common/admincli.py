"""``hookbus partners …`` and ``hookbus webhook-url …``: managing who may send webhooks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from . import db, partners, webhookurl
from .events import PartnerValidation
from .partners import PartnerError
from .settings import Settings

SettingsFor = Callable[[argparse.Namespace], Settings]


@asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await db.connect_once(settings.database)
    try:
        await db.migrate(conn, settings.database.schema)
        await conn.execute(f'SET search_path TO "{settings.database.schema}"')
        yield conn
    finally:
        await conn.close()


def _run(
    settings_for: SettingsFor,
    args: argparse.Namespace,
    work: Callable[[asyncpg.Connection, Settings], Awaitable[str]],
) -> int:
    settings = settings_for(args)

    async def go() -> str:
        async with _connection(settings) as conn:
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


def _add(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        p, token = await partners.create(
            conn,
            s.prefix,
            name=args.name,
            description=args.description,
            tenant=args.tenant,
            validation=_validation_from(args),
            status="INACTIVE" if args.inactive else "ACTIVE",
        )
        return partners.integration_guide(s, p, token)

    return work


def _rotate(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        p, token = await partners.rotate(conn, s.prefix, args.partner)
        return "The previous URL no longer works.\n\n" + partners.integration_guide(s, p, token)

    return work


def _list(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        rows = await partners.list_partners(conn, include_deleted=args.all)
        return "\n".join(partners.list_line(p) for p in rows) or "no partners"

    return work


def _show(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        return partners.show(await partners.get(conn, args.partner))

    return work


def _status(
    status: str,
) -> Callable[[argparse.Namespace], Callable[[asyncpg.Connection, Settings], Awaitable[str]]]:
    def make(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
        async def work(conn: asyncpg.Connection, s: Settings) -> str:
            p = await partners.set_status(conn, s.prefix, args.partner, status)
            return f"partner {p.partner_id} ({p.name}) is {p.status}"

        return work

    return make


def _delete(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        p = await partners.delete(conn, s.prefix, args.partner)
        return f"partner {p.partner_id} ({p.name}) deleted; its URL no longer works"

    return work


def _update(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        p = await partners.update(
            conn,
            s.prefix,
            args.partner,
            name=args.name,
            description=args.description,
            tenant=args.tenant,
            validation=_validation_from(args),
        )
        return partners.show(p)

    return work


def _validation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--require",
        action="append",
        metavar="PATH",
        help="a dotted JSON path the body must have (order.id); repeat for more",
    )
    p.add_argument("--schema", metavar="FILE", help="a JSON Schema file the body must satisfy")


# ------------------------------------------------------------------ webhook-url


def _image_push_url(s: Settings, secret: str) -> str:
    return f"{partners.base_url(s)}{webhookurl.PATH}{secret}"


def _url_show(args: argparse.Namespace) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        return _image_push_url(s, await webhookurl.ensure(conn))

    return work


def _url_regenerate(
    args: argparse.Namespace,
) -> Callable[[asyncpg.Connection, Settings], Awaitable[str]]:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        url = _image_push_url(s, await webhookurl.regenerate(conn))
        return f"{url}\n(the previous URL no longer works)"

    return work


# ---------------------------------------------------------------------- wiring


def register(sub: Any, settings_for: SettingsFor) -> None:
    """Add the ``partners`` and ``webhook-url`` commands to the ``hookbus`` parser."""

    def command(
        parent: Any,
        name: str,
        help: str,
        make: Callable[
            [argparse.Namespace], Callable[[asyncpg.Connection, Settings], Awaitable[str]]
        ],
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help)

        def func(args: argparse.Namespace) -> int:
            try:
                work = make(args)
            except PartnerError as exc:
                print(f"hookbus: {exc}", file=sys.stderr)
                return 1
            return _run(settings_for, args, work)

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

    url = sub.add_parser("webhook-url", help="the image-push URL (/api/webhook/<secret>)")
    us = url.add_subparsers(dest="webhook_url_command", required=True)
    command(us, "show", "print the image-push URL", _url_show)
    command(us, "regenerate", "replace the secret; the old URL stops working", _url_regenerate)
