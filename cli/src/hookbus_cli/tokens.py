"""``hookbus tokens …``: tokens for the operator API and dashboard (shown once, kept hashed)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec

from hookbus_api import tokens
from hookbus_api.tokens import SCOPES, ApiToken, TokenError
from hookbus_common.settings import Settings

from .config import core_settings
from .database import connection

Work = Callable[[asyncpg.Connection, Settings], Awaitable[str]]


def _by(args: argparse.Namespace) -> str | None:
    if getattr(args, "by", None):
        return str(args.by)
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def run(args: argparse.Namespace, work: Work) -> int:
    settings = core_settings(args)

    async def go() -> str:
        async with connection(settings.database, migrate=True) as conn:
            return await work(conn, settings)

    try:
        out = asyncio.run(go())
    except TokenError as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def list_line(t: ApiToken) -> str:
    created = t.created_at.strftime("%Y-%m-%d %H:%M")
    used = t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"
    state = "revoked" if t.revoked_at else "live"
    line = f"{t.token_id}  {t.name:<16} {t.scope:<8} {state:<8} created {created}  used {used}"
    if t.scope == "send":
        line += f"  tenants {','.join(t.tenants)}" if t.tenants else "  tenants all"
    return line


def cmd_create(args: argparse.Namespace) -> int:
    if args.name and args.name_arg and args.name != args.name_arg:
        print("hookbus: tokens create: give the name once (NAME or --name)", file=sys.stderr)
        return 2
    name = args.name or args.name_arg
    if not name:
        print("hookbus: tokens create: give the token a NAME", file=sys.stderr)
        return 2

    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        tok, secret = await tokens.create(
            conn, s.prefix, name=name, scope=args.scope, by=_by(args),
            tenants=args.tenant or (),
        )  # fmt: skip
        bound = f", tenants {', '.join(tok.tenants)}" if tok.tenants else ""
        text = (
            f"token {tok.token_id} ({tok.name}, scope {tok.scope}{bound}); shown this once,"
            f" keep it safe:\n\n  {secret}\n\nUse it as: Authorization: Bearer {secret[:8]}…"
        )
        if tok.scope == "send" and not tok.tenants:
            text += (
                "\n\nnote: this token sends messages for every tenant; --tenant NAME"
                " (repeatable) binds a send token to the tenants it may send for"
            )
        return text

    return run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        rows = await tokens.list_tokens(conn, include_revoked=args.all)
        if args.json:
            return "\n".join(msgspec.json.encode(t).decode() for t in rows)
        return "\n".join(list_line(t) for t in rows) or "no tokens"

    return run(args, work)


def cmd_revoke(args: argparse.Namespace) -> int:
    async def work(conn: asyncpg.Connection, s: Settings) -> str:
        tok = await tokens.revoke(conn, s.prefix, args.token, by=_by(args))
        return f"token {tok.token_id} ({tok.name}) revoked"

    return run(args, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tokens",
        help="tokens for the operator API and dashboard",
        description="Tokens sign people and scripts in to the operator API and dashboard."
        " A token is shown once, when it is made; only its hash is kept.",
    )
    cmds = p.add_subparsers(dest="tokens_command", required=True)
    c = cmds.add_parser("create", help="make a token (shown once)")
    c.add_argument(
        "name_arg", nargs="?", metavar="NAME", help="who or what holds it (unique among live ones)"
    )
    c.add_argument("--name", help="the same, as an option")
    c.add_argument(
        "--scope",
        choices=SCOPES,
        default="read",
        help="read: see everything; operate: also start replays; admin: also list tokens;"
        " send: send messages only",
    )
    c.add_argument(
        "--tenant",
        action="append",
        metavar="NAME",
        help="a send token sends messages for this tenant only; repeat for more"
        " (default: every tenant)",
    )
    c.add_argument("--by", metavar="NAME", help="who makes it, for the log (default: $USER)")
    c.set_defaults(func=cmd_create)
    ls = cmds.add_parser("list", help="list tokens (never the tokens themselves)")
    ls.add_argument("--all", action="store_true", help="revoked ones too")
    ls.add_argument("--json", action="store_true", help="JSON, one a line")
    ls.set_defaults(func=cmd_list)
    r = cmds.add_parser("revoke", help="revoke a token by id or name")
    r.add_argument("token", help="its id (tok_…) or name")
    r.add_argument("--by", metavar="NAME", help="who revokes it, for the log (default: $USER)")
    r.set_defaults(func=cmd_revoke)
