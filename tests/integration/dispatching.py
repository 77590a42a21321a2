"""The dispatcher's consume loop as its main() builds it, for the tests that run it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hookbus_common.consumer import Consumer, Handler
from hookbus_common.service import Runtime
from hookbus_dispatcher.delivery import max_deliver

REQUESTS = ("delivery", "requested")


def durable(rt: Runtime) -> str:
    return f"{rt.bus.prefix}-dispatcher"


def subject(rt: Runtime, tokens: Sequence[str] = REQUESTS) -> str:
    return ".".join((rt.bus.prefix, *tokens, ">"))


def dispatcher_consumer(
    rt: Runtime,
    handler: Handler,
    *,
    max_attempts: int,
    max_in_flight: int = 4,
    subjects: Sequence[Sequence[str]] = (REQUESTS,),
    make: Callable[..., Consumer] = Consumer,
    ack_wait: float = 30.0,
    drain_timeout: float | None = None,
) -> Consumer:
    """The dispatcher's durable and filter, ``max_deliver`` for ``max_attempts``, and no
    ``terminal_step``: as in main(), the handler finds a delivery that already ended."""
    return make(
        service="dispatcher", bus=rt.bus, outbox=rt.outbox, durable=durable(rt),
        filter_subjects=[subject(rt, t) for t in subjects], handler=handler,
        max_in_flight=max_in_flight, max_deliver=max_deliver(max_attempts), ack_wait=ack_wait,
        drain_timeout=drain_timeout,
    )  # fmt: skip
