"""``hookbus tail``: follow events on the bus as they are published, one line each (or
CloudEvents JSON lines), from now, a time or a stream sequence, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from hookbus_api.replayselect import parse_time, type_glob
from hookbus_common import events as ev
from hookbus_common.bus import stream_name
from hookbus_common.consumer import REPLAY_HEADER
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import RawEvent
from hookbus_common.settings import NatsSettings, Settings

from .config import core_settings
from .database import shown
from .events import json_line, summary

# Seconds to reach NATS before telling the person at the prompt that it is not there.
CONNECT_TIMEOUT = 5.0

_ROOTS = (ev.WebhookReceived.TYPE, ev.WebhookReplayed.TYPE)
# Chains followed for --source: enough for any tail a person reads; the oldest forgotten.
_MAX_CHAINS = 100_000


class BusUnreachable(Exception):
    """NATS could not be reached; the message is for people."""


@asynccontextmanager
async def nats_connection(settings: NatsSettings, name: str) -> AsyncIterator[Client]:
    """A NATS connection that rides out a NATS restart once made (as the services do), or
    BusUnreachable within seconds."""
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)  # the last one says why NATS cannot be reached

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            nc = await nats.connect(
                settings.servers, name=name, connect_timeout=2, reconnect_time_wait=0.5,
                max_reconnect_attempts=-1, error_cb=on_error,
            )  # fmt: skip
    except (OSError, nats.errors.Error) as exc:  # TimeoutError is an OSError
        cause = errors[-1] if errors else exc
        reason = str(cause) or type(cause).__name__
        raise BusUnreachable(
            f"cannot reach NATS at {shown(settings.url)} ({reason}) — start it with"
            " `hookbus up`, or set HOOKBUS_NATS__URL"
        ) from None
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


class Filter:
    """Which events a tail shows. ``source`` keeps webhooks from that source and the events
    of their chains (those whose webhook the tail has seen)."""

    def __init__(
        self, *, type: str | None = None, source: str | None = None, tenant: str | None = None
    ) -> None:
        self.type = type_glob(type) if type else None
        self.source = source
        self.tenant = tenant
        self._chains: dict[str, None] = {}

    def __call__(self, e: RawEvent) -> bool:
        if self.source is not None and e.type in _ROOTS:
            data: dict[str, Any] = msgspec.json.decode(e.data) if e.data else {}
            hook = data.get("webhook") or data
            if isinstance(hook, dict) and hook.get("source") == self.source:
                self._chains[e.correlationid] = None
                if len(self._chains) > _MAX_CHAINS:
                    del self._chains[next(iter(self._chains))]
        if self.source is not None and e.correlationid not in self._chains:
            return False
        if self.tenant is not None and e.tenant != self.tenant:
            return False
        return self.type is None or fnmatch.fnmatchcase(e.type, self.type)


def line(seq: int, subject: str, e: RawEvent, replay: str | None = None) -> str:
    """One event as ``hookbus events`` shows it (the stream sequence in place of the log's)."""
    logged = LoggedEvent(seq=seq, bus_subject=subject, event=e)
    short = e.type.removeprefix("io.hookbus.")
    ts = e.time.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    mark = f"  [replay {replay}]" if replay else ""
    return f"{seq:>7} {ts} {short:<28} {e.id}  {summary(logged)}{mark}".rstrip()


def consumer_config(since: datetime | None, from_seq: int | None) -> ConsumerConfig:
    if from_seq is not None:
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
        )
    if since is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
    return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)


async def tail(
    settings: Settings,
    *,
    subject: str | None,
    keep: Filter,
    as_json: bool,
    since: datetime | None,
    from_seq: int | None,
    limit: int | None,
    stop: asyncio.Event,
) -> int:
    """Print events until ``stop`` is set (or ``limit`` were printed); the count printed."""
    out = sys.stdout
    filter_subject = subject or f"{settings.prefix}.>"
    printed = 0
    async with nats_connection(settings.nats, "hookbus-tail") as nc:
        js = nc.jetstream()
        # An ordered consumer: ephemeral, in stream order, and re-created by the client
        # where it left off if a message is missed or NATS restarts.
        sub = await js.subscribe(
            filter_subject,
            stream=stream_name(settings.prefix),
            ordered_consumer=True,
            config=consumer_config(since, from_seq),
        )
        print(f"hookbus: following {filter_subject} (Ctrl-C to stop)", file=sys.stderr)
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while limit is None or printed < limit:
                got = asyncio.ensure_future(sub.next_msg(timeout=None))
                await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    await asyncio.wait({got})
                    if not got.cancelled():
                        got.exception()  # closing may have failed it first: seen, not raised
                    break
                msg: Msg = got.result()
                try:
                    e = msgspec.json.decode(msg.data, type=RawEvent)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not a hookbus event: nothing to show
                if not keep(e):
                    continue
                if as_json:
                    logged = LoggedEvent(
                        seq=msg.metadata.sequence.stream, bus_subject=msg.subject, event=e
                    )
                    out.buffer.write(json_line(logged))
                else:
                    replay = (msg.headers or {}).get(REPLAY_HEADER)
                    out.write(line(msg.metadata.sequence.stream, msg.subject, e, replay) + "\n")
                out.flush()
                printed += 1
        finally:
            stopped.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return printed


def cmd_tail(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    try:
        since = parse_time(args.since, datetime.now(UTC)) if args.since else None
    except ValueError as exc:
        print(f"hookbus: --since: {exc}", file=sys.stderr)
        return 2
    keep = Filter(type=args.type, source=args.source, tenant=args.tenant)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await tail(
            settings, subject=args.subject, keep=keep, as_json=args.json, since=since,
            from_seq=args.from_seq, limit=args.limit, stop=stop,
        )  # fmt: skip

    try:
        asyncio.run(go())
    except BusUnreachable as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tail",
        help="follow events on the bus as they are published",
        description="Follow events on the bus, one line each (or --json), until Ctrl-C.",
    )
    p.add_argument("--type", help="event types matching this glob (job.*, webhook.received)")
    p.add_argument("--source", help="webhooks from this source and the events of their chains")
    p.add_argument("--tenant", help="events of this tenant")
    p.add_argument("--subject", help="a raw NATS subject filter (default: <prefix>.>)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since", metavar="TIME", help="start at a time (ISO 8601, or 2h ago)")
    start.add_argument("--from-seq", type=_positive, metavar="N", help="start at stream sequence N")
    p.add_argument("--limit", type=_positive, metavar="N", help="stop after N events")
    p.add_argument("--json", action="store_true", help="CloudEvents JSON, one a line")
    p.set_defaults(func=cmd_tail)
