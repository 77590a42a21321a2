"""Entry point: ``hookbus-router`` / ``python -m hookbus_router``."""

from __future__ import annotations

import asyncio

from hookbus_common import eventlog
from hookbus_common.service import Runtime, main_for, run_consumer

from . import config, dryrun, projects, reload, routing, waits
from .config import RouterConfig
from .routing import FILTER_TOKENS, make_handler


async def run(settings: RouterConfig) -> None:
    # The rules in use, replaced whole by a reload (SIGHUP, or a change of the file).
    live = reload.LiveRules(settings, config.load)
    watching: list[asyncio.Task[None]] = []

    async def started(rt: Runtime) -> None:
        watching.append(reload.start(live, rt.stop))
        # Dry runs asked over the bus (the operator API's), with the rules in use.
        await dryrun.serve(rt.bus, live)
        # Multi-event rules: close and record waits whose window passed (every replica).
        store = waits.PgStore(rt.pool, rt.outbox)
        interval = settings.router.wait_sweep_seconds
        sweeper = waits.run_sweeper(
            store, rt.stop, interval=interval, active=lambda: live.current.multi
        )
        watching.append(asyncio.create_task(sweeper))

    await run_consumer(
        settings,
        "router",
        filter_tokens=FILTER_TOKENS,
        make_handler=lambda rt: make_handler(
            live,
            record_unmatched=settings.router.record_unmatched,
            projects=settings.projects,
            store=waits.PgStore(rt.pool, rt.outbox),
            created=projects.Created(rt.pool, settings.auto_projects),
            routed_before=lambda event_id: _routed_before(rt, event_id),
        ),
        started=started,
        health_port=settings.router.health_port,
        max_in_flight=settings.router.max_in_flight,
        max_deliver=settings.router.max_deliver,
        ack_wait=settings.router.ack_wait_seconds,
    )


async def _routed_before(rt: Runtime, event_id: str) -> bool:
    """Whether the routing record of ``event_id`` is in the log (asked on redeliveries)."""
    async with rt.pool.acquire() as conn:
        return await eventlog.exists(conn, routing.routed_id(event_id))


def main() -> None:
    main_for("router", config.load, run)


if __name__ == "__main__":
    main()
