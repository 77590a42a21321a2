"""The router's handler: a recorded webhook in, its routing record and requests out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from hookbus_common import events as ev
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.errors import PermanentError
from hookbus_common.events import Event, WebhookReceived

from .config import Action, Rule, ShellAction, WebhookAction
from .rules import evaluate

SOURCE = "/hookbus/router"


def _context(hook: Event[WebhookReceived]) -> dict[str, str]:
    """The webhook's facts as environment variables for actions."""
    d = hook.data
    facts = {
        "HOOKBUS_EVENT_ID": hook.id,
        "HOOKBUS_CORRELATION_ID": hook.correlationid,
        "HOOKBUS_SOURCE": d.source,
        "HOOKBUS_SOURCE_KIND": d.kind,
        "HOOKBUS_EVENT_TYPE": d.event_type,
        "HOOKBUS_DELIVERY_ID": d.delivery_id,
        "HOOKBUS_REPOSITORY": d.repository,
        "HOOKBUS_BRANCH": d.branch,
        "HOOKBUS_TAG": d.tag,
        "HOOKBUS_COMMIT": d.commit,
        "HOOKBUS_SENDER": d.sender,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _headers(configured: dict[str, str]) -> dict[str, str]:
    """The rule's headers, with a JSON content type unless the rule sets one (any case)."""
    if any(k.lower() == "content-type" for k in configured):
        return dict(configured)
    return {"content-type": "application/json", **configured}


def _spec(action: ShellAction) -> ev.JobSpec:
    return ev.ShellSpec(
        command=list(action.command),
        env=dict(action.env),
        timeout=action.timeout,
        payload=action.payload,
        cwd=action.cwd,
    )


def _request(hook: Event[WebhookReceived], rule: Rule, index: int, action: Action) -> Event[Any]:
    step = f"{rule.name}/{index}"
    match action:
        case ShellAction():
            data: ev.EventData = ev.JobRequestedV2(
                job_id=ev.derived_id(hook.id, f"job/{step}", prefix="job"),
                rule=rule.name,
                webhook_id=hook.id,
                spec=_spec(action),
                context=_context(hook),
                payload=hook.data.payload,
            )
        case WebhookAction():
            data = ev.DeliveryRequested(
                delivery_id=ev.derived_id(hook.id, f"delivery/{step}", prefix="dlv"),
                rule=rule.name,
                webhook_id=hook.id,
                url=action.url,
                method=action.method,
                headers=_headers(action.headers),
                body=hook.data.payload,
                tenant=hook.tenant,
            )
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(hook.id, f"request/{step}"), cause=hook
    )


def route(rules: Sequence[Rule], hook: Event[WebhookReceived]) -> list[Event[Any]]:
    """Evaluate every rule; return the routing record followed by the requests it makes."""
    evaluations = [evaluate(rule, hook.data) for rule in rules]
    requests = [
        _request(hook, rule, i, action)
        for rule, result in zip(rules, evaluations, strict=True)
        if result.matched
        for i, action in enumerate(rule.actions)
    ]
    routed = ev.make_event(
        ev.WebhookRouted(
            source=hook.data.source,
            event_type=hook.data.event_type,
            webhook_id=hook.id,
            matched=[e.rule for e in evaluations if e.matched],
            evaluations=evaluations,
            requested=[r.id for r in requests],
        ),
        source=SOURCE,
        id=ev.derived_id(hook.id, "routed"),
        cause=hook,
        subject=hook.subject,
    )
    return [routed, *requests]


def make_handler(rules: Sequence[Rule]) -> Handler:
    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        event = incoming.event
        if not isinstance(event.data, WebhookReceived):
            raise PermanentError(f"router cannot handle {event.type}")
        yield route(rules, event)

    return handle
