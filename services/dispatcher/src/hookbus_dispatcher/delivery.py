"""The dispatcher's handler: a delivery request in; attempts and one outcome out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming, Yielded, backoff
from hookbus_common.errors import PermanentError, RetryableError
from hookbus_common.events import DeliveryRequested, Event
from hookbus_common.service import Runtime

SOURCE = "/hookbus/dispatcher"
USER_AGENT = "hookbus-dispatcher/0.1"


def retryable_status(status: int) -> bool:
    """Worth another attempt: server errors, timeouts, and being told to slow down."""
    return status >= 500 or status in (408, 425, 429)


def _outcome(
    cls: type[ev.DeliveryOutcome], cause: Event[DeliveryRequested], step: str, **fields: Any
) -> Event[Any]:
    req = cause.data
    data = cls(delivery_id=req.delivery_id, url=req.url, tenant=req.tenant, **fields)
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(cause.id, step), cause=cause, subject=req.delivery_id
    )


async def attempt(
    client: httpx.AsyncClient, event: Event[DeliveryRequested], number: int, max_attempts: int
) -> tuple[list[Event[Any]], RetryableError | None]:
    """Send once; return the events to record and, when another attempt is due, why."""
    req = event.data
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        resp = await client.request(
            req.method,
            req.url,
            content=bytes(req.body),
            headers={
                "user-agent": USER_AGENT,
                **req.headers,
                "x-hookbus-delivery": req.delivery_id,
            },
        )
        status = resp.status_code
        ra = resp.headers.get("retry-after", "")
        retry_after = float(ra) if ra.isdigit() else None
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    fields: dict[str, Any] = {"attempt": number, "status_code": status, "error": error}
    fields["duration_ms"] = (time.perf_counter() - started) * 1000
    attempted = _outcome(ev.DeliveryAttempted, event, f"attempt/{number}", **fields)
    if status is not None and 200 <= status < 300:
        return [attempted, _outcome(ev.DeliverySucceeded, event, "outcome", **fields)], None
    if status is not None and not retryable_status(status):
        return [attempted, _outcome(ev.DeliveryFailed, event, "outcome", **fields)], None
    if number >= max_attempts:
        return [attempted, _outcome(ev.DeliveryDead, event, "outcome", **fields)], None
    why = f"attempt {number} failed: {status or error}"
    return [attempted], RetryableError(why, delay=retry_after or backoff(number, base=1.0))


def make_handler(rt: Runtime, client: httpx.AsyncClient, max_attempts: int) -> Any:

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        event = incoming.event
        if not isinstance(event.data, DeliveryRequested):
            raise PermanentError(f"dispatcher cannot handle {event.type}")
        async with rt.pool.acquire() as conn:
            if await eventlog.exists(conn, ev.derived_id(event.id, "outcome")):
                return  # delivered (or given up) before; we died before acking
        events, retry = await attempt(client, event, incoming.deliveries, max_attempts)
        yield events
        if retry is not None:
            raise retry

    return handle
