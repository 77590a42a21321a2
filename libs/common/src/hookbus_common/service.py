"""What every service process shares: start-up, connections, relay, health, shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from . import events, gcsettle, logs, looplag, tracing
from .bus import Bus, connect
from .consumer import Consumer, Handler
from .db import open_pool
from .errors import ConfigError
from .groupedoutbox import GroupedOutbox
from .health import serve_health
from .outbox import Outbox
from .settings import Settings

S = TypeVar("S", bound=Settings)

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    service: str
    pool: asyncpg.Pool
    bus: Bus
    outbox: Outbox
    stop: asyncio.Event

    async def ready(self) -> dict[str, bool]:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            pg = True
        except Exception:
            pg = False
        return {"nats": self.bus.connected, "postgres": pg}


@asynccontextmanager
async def runtime(settings: Settings, service: str) -> AsyncIterator[Runtime]:
    """Open Postgres (migrating first) and NATS, and run the outbox relay and cleaner."""
    stop = asyncio.Event()
    traced = tracing.configure(settings.tracing, service)
    async with (
        open_pool(settings.database) as pool,
        connect(settings.nats, settings.prefix, f"hookbus-{service}") as bus,
    ):
        outbox = Outbox(pool, bus)
        rt = Runtime(settings, service, pool, bus, outbox, stop)
        looplag.watch_gc()
        background = [
            asyncio.create_task(outbox.run_relay(stop), name="outbox-relay"),
            asyncio.create_task(outbox.run_cleaner(stop), name="outbox-cleaner"),
        ]
        # Holds nothing: cancelled at the end rather than waited for (its timer is long).
        lag = asyncio.create_task(looplag.watch_loop(stop), name="loop-lag")
        try:
            yield rt
        finally:
            await outbox.drain()
            stop.set()
            lag.cancel()
            await asyncio.wait(background, timeout=5)
            for t in background:
                t.cancel()
            looplag.unwatch_gc()
            if traced:  # sends what is buffered: blocking I/O, off the loop
                await asyncio.to_thread(tracing.shutdown)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def run_consumer(
    settings: Settings,
    service: str,
    *,
    filter_tokens: Sequence[tuple[str, ...]],
    make_handler: Callable[[Runtime], Handler],
    health_port: int,
    max_in_flight: int,
    max_deliver: int,
    ack_wait: float = 30.0,
    terminal_step: str | None = None,
    drain_timeout: float | None = None,
    started: Callable[[Runtime], Awaitable[None]] | None = None,
    make_consumer: Callable[..., Consumer] = Consumer,
) -> None:
    """Run one consuming service until SIGINT/SIGTERM.

    ``filter_tokens`` holds one tuple of subject tokens per filter (``("job",
    "requested")`` takes ``<prefix>.job.requested.>``); ``terminal_step`` is the step
    whose derived event marks a message's work as finished (see ``Consumer``);
    ``drain_timeout`` is how long work in hand may take to finish once stopped (default:
    ``ack_wait``); ``make_consumer`` builds the consume loop (a ``Consumer`` subclass that
    orders messages its own way takes the same arguments).
    """
    async with runtime(settings, service) as rt:
        install_signal_handlers(rt.stop)
        # Messages whose work commits at the same time share one transaction.
        grouped = GroupedOutbox(rt.outbox)
        consumer = make_consumer(
            service=service,
            bus=rt.bus,
            outbox=grouped,
            durable=f"{settings.prefix}-{service}",
            filter_subjects=[".".join((settings.prefix, *t, ">")) for t in filter_tokens],
            handler=make_handler(rt),
            max_in_flight=max_in_flight,
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            terminal_step=terminal_step,
            drain_timeout=drain_timeout,
        )
        # A second replica on this host gets a free port instead of dying on a busy one.
        async with serve_health(
            "0.0.0.0",  # noqa: S104
            health_port,
            rt.ready,
            fall_back_when_busy=True,
        ):
            if started is not None:
                await started(rt)
            gcsettle.settle()
            log.info("started", extra={"service": service})
            try:
                await consumer.run(rt.stop)
            finally:
                await grouped.close()
    log.info("stopped", extra={"service": service})


def main_for(
    service: str,
    load: Callable[[str | None], S],
    run: Callable[[S], Coroutine[Any, Any, None]],
    *,
    uvloop_if_available: bool = True,
) -> None:
    """Command-line entry point of a service: ``--config``, its settings, logs, event loop."""
    parser = argparse.ArgumentParser(prog=f"hookbus-{service}")
    parser.add_argument("--config", "-c", help="TOML config file (default: $HOOKBUS_CONFIG)")
    args = parser.parse_args()
    try:
        settings = load(args.config)
    except ConfigError as exc:
        print(f"hookbus-{service}: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(service, settings.log.level, settings.log.format)
    events.allow_deep_payloads()
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if uvloop_if_available:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run
    with suppress(KeyboardInterrupt):
        runner(run(settings))
