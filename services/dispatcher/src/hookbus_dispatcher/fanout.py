"""Fan-out: a submitted message (``message.submitted``) becomes one ``delivery.requested``
per endpoint of its tenant subscribed to its event type.

It happens here, in the dispatcher, because the dispatcher is the one service that
knows every endpoint: the config's ``[endpoints.*]`` with their tenants and event globs,
and the run-time ones from Postgres. The router knows config endpoints by name only, and
the API none. The set is read when the message is handled; the requests and a
``message.dispatched`` naming them are committed together, with ids derived from the
message's event and each endpoint's name, so a redelivered message adds nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.events import Event, MessageSubmitted

from . import endpointstore
from .config import Endpoint

SOURCE: Final = "/hookbus/dispatcher"
FANOUT_RULE: Final = "message"
"""The ``rule`` of a delivery requested for a message no rule submitted (API, CLI)."""


def delivery_id(message_event_id: str, endpoint: str) -> str:
    """The delivery of a message's event to one endpoint: the same on every redelivery."""
    return ev.derived_id(message_event_id, f"endpoint/{endpoint}", prefix="dlv")


def requests(event: Event[MessageSubmitted], endpoints: Sequence[str]) -> list[Event[Any]]:
    """The deliveries of ``event`` to ``endpoints``, and the record that names them."""
    msg = event.data
    out: list[Event[Any]] = []
    for name in endpoints:
        data = ev.DeliveryRequested(
            delivery_id=delivery_id(event.id, name),
            rule=msg.rule or FANOUT_RULE,
            webhook_id=msg.webhook_id or event.id,
            url="",
            headers={"content-type": "application/json"},
            body=msgspec.Raw(bytes(msg.payload)),
            tenant=msg.tenant,
            endpoint=name,
            event_type=msg.event_type,
            # webhook-id: the message's id, the same at every endpoint and on every attempt.
            message_id=msg.message_id,
            # Deliveries with one key go to each endpoint one at a time, in log order.
            ordering_key=msg.ordering_key,
        )
        out.append(
            ev.make_event(
                data,
                source=SOURCE,
                id=ev.derived_id(event.id, f"request/{name}"),
                cause=event,
                subject=data.delivery_id,
            )
        )
    done = ev.MessageDispatched(
        message_id=msg.message_id,
        event_type=msg.event_type,
        tenant=msg.tenant,
        endpoints=list(endpoints),
        delivery_ids=[e.data.delivery_id for e in out],
    )
    # Step "outcome": the consume loop's terminal step, so a message fanned out already
    # is skipped when it comes back (an endpoint added since changes nothing).
    out.append(
        ev.make_event(
            done,
            source=SOURCE,
            id=ev.derived_id(event.id, "outcome"),
            cause=event,
            subject=msg.message_id,
        )
    )
    return out


def with_fanout(
    deliver: Handler, pool: asyncpg.Pool, configured: Mapping[str, Endpoint] | None = None
) -> Handler:
    """``deliver`` (the delivery handler), also taking submitted messages and fanning them out."""
    endpoints = configured or {}

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        event = incoming.event
        if isinstance(event.data, MessageSubmitted):
            names = await endpointstore.subscribed(
                pool, endpoints, event.data.tenant, event.data.event_type
            )
            yield requests(event, names)
            return
        async for item in deliver(incoming):
            yield item

    return handle
