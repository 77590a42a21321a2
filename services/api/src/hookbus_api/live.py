"""Live: the bus as server-sent events (a core NATS subscription to ``<prefix>.>``), and
each service's consumer lag from JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from hookbus_common.bus import Bus
from hookbus_common.events import RawEvent

from .schemas import ConsumerLag

log = logging.getLogger(__name__)

# The services that consume with a durable `<prefix>-<service>`.
CONSUMING: Final = ("router", "executor", "dispatcher")
# Events waiting for a slow client; past this the oldest are dropped (and counted).
QUEUE: Final = 1000
HEARTBEAT: Final = 15.0

STREAMS_OPEN = Gauge("hookbus_api_live_streams", "Server-sent event streams open")
DROPPED = Counter(
    "hookbus_api_live_dropped_total", "Live events not sent to a client that fell behind"
)


class LiveEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What a live stream sends for each event (its data is left out: open it by id)."""

    id: str
    type: str
    source: str
    time: str
    tenant: str
    correlationid: str
    subject: str | None
    bus_subject: str


def _live(msg: Msg) -> bytes | None:
    try:
        e = msgspec.json.decode(msg.data, type=RawEvent)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # not a hookbus event
    return msgspec.json.encode(
        LiveEvent(
            id=e.id,
            type=e.type,
            source=e.source,
            time=e.time.isoformat(),
            tenant=e.tenant,
            correlationid=e.correlationid,
            subject=e.subject,
            bus_subject=msg.subject,
        )
    )


async def stream(
    bus: Bus, stop: asyncio.Event, *, max_seconds: float = 300.0
) -> AsyncIterator[bytes]:
    """SSE frames of every event published from now on, a comment every 15 s to keep the
    connection open, for ``max_seconds`` (then the client reconnects) or until ``stop``."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)

    async def on_msg(msg: Msg) -> None:
        frame = _live(msg)
        if frame is None:
            return
        if queue.full():
            DROPPED.inc()
            queue.get_nowait()
        queue.put_nowait(frame)

    sub = await bus.nc.subscribe(f"{bus.prefix}.>", cb=on_msg)
    # A subscription is the server's only once it has read it: a round trip makes sure,
    # so an event published after the first frame is never missed. With NATS away the
    # stream starts all the same (the client resubscribes on reconnect).
    with contextlib.suppress(Exception):
        await bus.nc.flush(timeout=2)
    STREAMS_OPEN.inc()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    try:
        yield b"retry: 2000\n: hookbus live\n\n"
        while not stop.is_set() and loop.time() < deadline:
            try:
                async with asyncio.timeout(HEARTBEAT):
                    frame = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            yield b"event: hookbus\ndata: " + frame + b"\n\n"
    finally:
        STREAMS_OPEN.dec()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def consumer_lag(bus: Bus) -> list[ConsumerLag]:
    out = []
    for service in CONSUMING:
        durable = f"{bus.prefix}-{service}"
        try:
            info = await bus.js.consumer_info(bus.stream, durable, timeout=2)
        except (nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
            out.append(ConsumerLag(service=service, durable=durable, found=False))
            continue
        out.append(
            ConsumerLag(
                service=service,
                durable=durable,
                found=True,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                waiting=info.num_waiting or 0,
            )
        )
    return out
