"""Messages applications hand hookbus to deliver (``POST /api/v1/messages``, ``hookbus
send``): checked, then committed to the event log as ``message.submitted`` before anything
is sent; the dispatcher turns each into one delivery per subscribed endpoint.

An ``idempotency_key`` makes the message id a function of (tenant, key): the same key
again is the same message, recorded once, and answered with the original id.
"""

from __future__ import annotations

import re
from typing import Any, Final

import asyncpg
import msgspec

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.errors import InvalidError
from hookbus_common.eventlog import Appended, Pending

SOURCE: Final = "/hookbus/api/messages"
MAX_BODY_BYTES: Final = 1024 * 1024
"""A request body larger than this is refused (the payload is most of it)."""

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")


class SendMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A message to deliver to every endpoint of ``tenant`` subscribed to ``event_type``.

    ``payload`` is any JSON value, sent as the request body. ``idempotency_key``: the same
    key (per tenant) is the same message, recorded once. ``ordering_key`` is recorded with
    the message and on each of its deliveries: those with one key go to an endpoint one
    at a time, in the order they were recorded."""

    event_type: str
    payload: Any
    tenant: str = "default"
    idempotency_key: str | None = None
    ordering_key: str | None = None


class MessageAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The message as recorded: its id (``msg_…``, the ``webhook-id`` receivers see) and
    the id of its event in the log. ``duplicate``: its idempotency key was seen before,
    and this is the message recorded then."""

    id: str
    event_id: str
    tenant: str
    event_type: str
    duplicate: bool = False


_decoder = msgspec.json.Decoder(SendMessage)


def check_length(content_length: str | None) -> None:
    """Refuse a body announced as too large before reading it."""
    if content_length and content_length.isdigit() and int(content_length) > MAX_BODY_BYTES:
        raise InvalidError(f"body: larger than {MAX_BODY_BYTES} bytes")


def parse(body: bytes) -> SendMessage:
    """The request body checked; ``InvalidError`` naming the field otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidError(f"body: larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise InvalidError("body: expected a JSON object with event_type and payload")
    try:
        msg = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidError(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidError(f"body: not JSON: {exc}") from None
    check(msg)
    return msg


def check(msg: SendMessage) -> None:
    """What the types cannot say; ``InvalidError`` naming the field."""
    if not _TENANT.match(msg.tenant):
        raise InvalidError("tenant: use 1-64 letters, digits, '.', '_' or '-'")
    if not _EVENT_TYPE.match(msg.event_type):
        raise InvalidError(
            "event_type: use 1-128 letters, digits, '.', '_', ':', '/' or '-'"
            " (like invoice.paid), starting with a letter or digit"
        )
    for field in ("idempotency_key", "ordering_key"):
        value = getattr(msg, field)
        if value is not None and not _KEY.match(value):
            raise InvalidError(f"{field}: use 1-256 printable ASCII characters, no spaces")


def message_id(tenant: str, idempotency_key: str | None) -> str:
    """The message's id: derived from (tenant, key) when there is a key, so a repeat is
    the same message; random otherwise."""
    if idempotency_key is None:
        return ev.new_id("msg")
    return ev.derived_id(f"{tenant}\x00{idempotency_key}", "message", prefix="msg")


def event_for(msg: SendMessage, *, by: str | None) -> ev.Event[ev.MessageSubmitted]:
    mid = message_id(msg.tenant, msg.idempotency_key)
    data = ev.MessageSubmitted(
        message_id=mid,
        event_type=msg.event_type,
        payload=msgspec.Raw(msgspec.json.encode(msg.payload)),
        tenant=msg.tenant,
        idempotency_key=msg.idempotency_key,
        ordering_key=msg.ordering_key,
        submitted_by=by,
    )
    return ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(mid, "submitted"),
        subject=mid,
        tenant=msg.tenant,
    )


async def submit(
    conn: asyncpg.Connection, prefix: str, msg: SendMessage, *, by: str | None
) -> tuple[MessageAccepted, list[Appended]]:
    """Commit the message to the log; returns what to answer and the events appended now
    (none for a repeat), for the caller to publish (the outbox relay would otherwise)."""
    event = event_for(msg, by=by)
    inserted, _ = await eventlog.insert(conn, prefix, [Pending(event)])
    accepted = MessageAccepted(
        id=event.data.message_id,
        event_id=event.id,
        tenant=msg.tenant,
        event_type=msg.event_type,
        duplicate=not inserted,
    )
    return accepted, inserted


async def backlog(conn: asyncpg.Connection, tenant: str) -> int:
    """Deliveries of ``tenant`` not yet ended (pending or waiting for a retry)."""
    value = await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE tenant = $1 AND status IN ('pending', 'retrying')",
        tenant,
    )
    return int(value or 0)
