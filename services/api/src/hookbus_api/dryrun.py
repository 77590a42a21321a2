"""Rules dry-run: what the router's rules in use make of a recorded webhook. The API asks
a running router over the bus (``events.dry_run_subject``) rather than evaluating rules
itself: the answer is the router's own evaluation with the rules it has loaded, and the
API depends on no other service. Nothing is requested, recorded or run."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors

from hookbus_common import events as ev
from hookbus_common.errors import InvalidError, NotFoundError, UnavailableError
from hookbus_common.eventlog import raw_event
from hookbus_common.service import Runtime

# How long to wait for a router's answer.
TIMEOUT = 5.0
_WEBHOOKS = (ev.WebhookReceived.TYPE, ev.WebhookReplayed.TYPE)
_COLUMNS = (
    "id, type, source, subject, tenant, correlation_id, causation_id, time, data,"
    " traceparent, tracestate"
)


class RulesDryRun(msgspec.Struct, frozen=True, kw_only=True):
    """A router's rules on one recorded webhook: each rule's decision (a rule that did not
    match names the first test that failed), the actions a template left out, and one line
    on each request its actions would make."""

    event_id: str
    source: str
    event_type: str
    config_version: str
    matched: list[str]
    evaluations: list[ev.RuleEvaluation]
    skipped: list[ev.ActionSkipped] = []
    requests: list[ev.PlannedRequest] = []


async def _envelope(rt: Runtime, event_id: str) -> tuple[bytes, Any]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM events WHERE id = $1", event_id)
    if row is None:
        raise NotFoundError(f"no event {event_id!r}")
    if row["type"] not in _WEBHOOKS:
        raise InvalidError(f"event: {event_id} is a {row['type']}, not a webhook")
    raw = raw_event(row)
    return msgspec.json.encode(raw), ev.decode_data(raw.type, raw.data)


async def dry_run(rt: Runtime, event_id: str) -> RulesDryRun:
    envelope, data = await _envelope(rt, event_id)
    request = msgspec.json.encode(ev.DryRunRequest(event=msgspec.Raw(envelope)))
    try:
        reply = await rt.bus.nc.request(ev.dry_run_subject(rt.bus.prefix), request, timeout=TIMEOUT)
    except nats.errors.NoRespondersError:
        raise UnavailableError("no router is running to evaluate the rules") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise UnavailableError(f"no router answered within {TIMEOUT:g}s") from None
    answer = msgspec.json.decode(reply.data, type=ev.DryRunAnswer)
    if answer.error is not None:
        raise InvalidError(f"event: {answer.error}")
    hook = data.webhook if isinstance(data, ev.WebhookReplayed) else data
    return RulesDryRun(
        event_id=event_id, source=hook.source, event_type=hook.event_type,
        config_version=answer.config_version, matched=answer.matched,
        evaluations=answer.evaluations, skipped=answer.skipped, requests=answer.requests,
    )  # fmt: skip
