"""``hookbus webhook-url …``: the image-push URL (``/api/webhook/<secret>``)."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from hookbus_receiver import webhookurl

from .config import ReceiverAddress
from .partners import Work, run


def _image_push_url(s: ReceiverAddress, secret: str) -> str:
    return f"{s.receiver.base_url()}{webhookurl.PATH}{secret}"


def _url_show(args: argparse.Namespace) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        return _image_push_url(s, await webhookurl.ensure(conn))

    return work


def _url_regenerate(
    args: argparse.Namespace,
) -> Work:
    async def work(conn: asyncpg.Connection, s: ReceiverAddress) -> str:
        url = _image_push_url(s, await webhookurl.regenerate(conn))
        return f"{url}\n(the previous URL no longer works)"

    return work


def register(sub: Any) -> None:
    url = sub.add_parser("webhook-url", help="the image-push URL (/api/webhook/<secret>)")
    us = url.add_subparsers(dest="webhook_url_command", required=True)
    for name, help, make in (
        ("show", "print the image-push URL", _url_show),
        ("regenerate", "replace the secret; the old URL stops working", _url_regenerate),
    ):
        url_cmd = us.add_parser(name, help=help)
        url_cmd.set_defaults(func=lambda args, make=make: run(args, make(args)))
