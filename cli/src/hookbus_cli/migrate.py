"""``hookbus migrate`` and ``hookbus rebuild``: the schema, and read models from the log."""

from __future__ import annotations

import argparse
import asyncio

from hookbus_common import db, readmodels
from hookbus_common.settings import DatabaseSettings

from .config import core_settings
from .database import connect, connection


async def migrate(settings: DatabaseSettings) -> list[str]:
    conn = await connect(settings)
    try:
        return await db.migrate(conn, settings.schema)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    applied = asyncio.run(migrate(settings.database))
    print("\n".join(f"applied {n}" for n in applied) or "schema is up to date")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = core_settings(args)

    async def run() -> int:
        async with connection(settings.database, migrate=True) as conn:
            return await readmodels.rebuild(conn)

    print(f"read models rebuilt from {asyncio.run(run())} events")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("rebuild", help="rebuild read models from the event log").set_defaults(
        func=cmd_rebuild
    )
