"""Dry runs: what the router's rules in use make of a recorded webhook, asked over the bus
(core NATS request/reply; the operator API asks). The router's own evaluation, with
nothing requested, recorded or run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hookbus_common import events as ev
from hookbus_common.bus import Bus

from .routing import route, route_replay
from .rules import RuleSet

log = logging.getLogger(__name__)

_request = msgspec.json.Decoder(ev.DryRunRequest)
_encode = msgspec.json.Encoder().encode


def summary(request: ev.Event[Any]) -> str:
    """One line on what a request would do (never its secrets: no env, no headers)."""
    match request.data:
        case ev.JobRequestedV2(spec=spec):
            what = getattr(spec, "command", None)
            shown = " ".join(what) if isinstance(what, list) else str(what or "")
            extra = getattr(spec, "container", None) or getattr(spec, "project", None) or ""
            return f"{ev.spec_kind(spec)}: {shown or extra}"[:300]
        case ev.DeliveryRequested(endpoint=endpoint, url=url, method=method, notification=n):
            if n:
                return f"notify: {n}"
            return f"webhook: {method} {f'endpoint {endpoint}' if endpoint else url}"[:300]
    return request.type


def answer(rules: RuleSet, raw: bytes) -> ev.DryRunAnswer:
    """Evaluate the envelope ``raw`` (a recorded webhook.received or webhook.replayed)."""
    try:
        event = ev.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return ev.DryRunAnswer(config_version=rules.version, error=f"undecodable event: {exc}")
    match event.data:
        case ev.WebhookReplayed():
            out = route_replay(rules, event, record_unmatched=True)
        case ev.WebhookReceived():
            out = route(rules, event, record_unmatched=True)
        case _:
            return ev.DryRunAnswer(
                config_version=rules.version, error=f"{event.type} is not a webhook"
            )
    routed: ev.WebhookRouted = out[0].data
    return ev.DryRunAnswer(
        config_version=rules.version,
        matched=list(routed.matched),
        evaluations=list(routed.evaluations),
        skipped=list(routed.skipped),
        requests=[
            ev.PlannedRequest(rule=getattr(r.data, "rule", ""), type=r.type, summary=summary(r))
            for r in out[1:]
        ],
    )


async def serve(bus: Bus, rules: Callable[[], RuleSet]) -> Subscription:
    """Answer dry runs with the rules in use (read per request, so a reload applies);
    the replicas form one queue group, so one of them answers each request."""

    async def reply(msg: Msg) -> None:
        try:
            req = _request.decode(msg.data)
            out = answer(rules(), bytes(req.event))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            out = ev.DryRunAnswer(error=f"bad request: {exc}")
        except Exception as exc:  # one bad request never stops the others
            log.exception("dry run failed")
            out = ev.DryRunAnswer(error=f"{type(exc).__name__}: {exc}")
        try:
            await msg.respond(_encode(out))
        except Exception as exc:
            log.warning("could not answer a dry run", extra={"error": repr(exc)})

    subject = ev.dry_run_subject(bus.prefix)
    return await bus.nc.subscribe(subject, queue=f"{bus.prefix}-router-dry-run", cb=reply)
