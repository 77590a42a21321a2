"""The router's handler: a recorded webhook in, its routing record and requests out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.errors import PermanentError
from hookbus_common.events import Event, WebhookReceived, WebhookReplayed

from . import metrics
from .config import (
    Action,
    ComposeAction,
    DockerAction,
    HealthCheck,
    Rule,
    ShellAction,
    SshAction,
    WebhookAction,
)
from .projects import Project
from .projects import requests as project_requests
from .rules import Facts, RuleSet, context
from .templates import RenderError, render_action

SOURCE = "/hookbus/router"
# What the router consumes, as subject tokens under the prefix: webhooks as received, and
# replays of them (two filters on one durable need NATS 2.10 or later).
FILTER_TOKENS: tuple[tuple[str, ...], ...] = (("webhook", "received"), ("webhook", "replayed"))


def _context(event: Event[Any], hook: WebhookReceived, replay_of: str | None) -> dict[str, str]:
    """The webhook's facts as environment variables for actions."""
    facts = {
        "HOOKBUS_EVENT_ID": event.id,
        "HOOKBUS_CORRELATION_ID": event.correlationid,
        "HOOKBUS_REPLAY_OF": replay_of,
        "HOOKBUS_SOURCE": hook.source,
        "HOOKBUS_SOURCE_KIND": hook.kind,
        "HOOKBUS_EVENT_TYPE": hook.event_type,
        "HOOKBUS_DELIVERY_ID": hook.delivery_id,
        "HOOKBUS_REPOSITORY": hook.repository,
        "HOOKBUS_BRANCH": hook.branch,
        "HOOKBUS_TAG": hook.tag,
        "HOOKBUS_COMMIT": hook.commit,
        "HOOKBUS_SENDER": hook.sender,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _headers(configured: dict[str, str]) -> dict[str, str]:
    """The rule's headers, with a JSON content type unless the rule sets one (any case)."""
    if any(k.lower() == "content-type" for k in configured):
        return dict(configured)
    return {"content-type": "application/json", **configured}


def _health(h: HealthCheck | None) -> ev.HealthProbe | None:
    if h is None:
        return None
    tcp = None if h.tcp is None else str(h.tcp)
    return ev.HealthProbe(http=h.http, tcp=tcp, timeout=h.timeout, interval=h.interval)


def _spec(action: ShellAction | SshAction | DockerAction | ComposeAction) -> ev.JobSpec:
    if isinstance(action, DockerAction):
        return ev.DockerSpec(
            operation=action.operation,
            container=action.container,
            image=action.image,
            command=None if action.command is None else list(action.command),
            env=dict(action.env),
            timeout=action.timeout,
            pull=action.pull,
            health=_health(action.health),
            stop_timeout=action.stop_timeout,
        )
    if isinstance(action, ComposeAction):
        return ev.ComposeSpec(
            file=action.file,
            project=action.project,
            operation=action.operation,
            services=list(action.services),
            env=dict(action.env),
            timeout=action.timeout,
            pull=action.pull,
            wait=action.wait,
        )
    if isinstance(action, SshAction):
        return ev.SshSpec(
            host=action.host,
            command=list(action.command),
            env=dict(action.env),
            timeout=action.timeout,
            payload=action.payload,
        )
    return ev.ShellSpec(
        command=list(action.command),
        env=dict(action.env),
        timeout=action.timeout,
        payload=action.payload,
        cwd=action.cwd,
    )


def _request(
    event: Event[Any],
    hook: WebhookReceived,
    replay_of: str | None,
    rule: Rule,
    index: int,
    action: Action,
) -> Event[Any]:
    step = f"{rule.name}/{index}"
    match action:
        case ShellAction() | SshAction() | DockerAction() | ComposeAction():
            data: ev.EventData = ev.JobRequestedV2(
                job_id=ev.derived_id(event.id, f"job/{step}", prefix="job"),
                rule=rule.name,
                webhook_id=event.id,
                spec=_spec(action),
                context=_context(event, hook, replay_of),
                payload=hook.payload,
                on_interrupt=action.on_interrupt,
            )
        case WebhookAction():
            data = ev.DeliveryRequested(
                delivery_id=ev.derived_id(event.id, f"delivery/{step}", prefix="dlv"),
                rule=rule.name,
                webhook_id=event.id,
                url=action.url or "",
                method=action.method,
                headers=_headers(action.headers),
                body=hook.payload,
                tenant=event.tenant,
                endpoint=action.endpoint,
                event_type=hook.event_type,
            )
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(event.id, f"request/{step}"), cause=event
    )


Rules = Sequence[Rule] | RuleSet


def _route(
    rules: Rules,
    event: Event[Any],
    hook: WebhookReceived,
    replay_of: str | None,
    record_unmatched: bool,
    projects: Mapping[str, Project] | None = None,
) -> list[Event[Any]]:
    # Every id derives from the routed event's: a webhook's redelivery derives the same
    # ones (and is refused as a duplicate), while a replay, a new event, makes new ones.
    ruleset = RuleSet.of(rules)
    facts = Facts(hook, event_id=event.id, tenant=event.tenant, time=event.time.isoformat())
    evaluations = [r.evaluate(hook, facts) for r in ruleset.rules]
    requests: list[Event[Any]] = []
    skipped: list[ev.ActionSkipped] = []
    for compiled, result in zip(ruleset.rules, evaluations, strict=True):
        if not result.matched:
            continue
        rule = compiled.rule
        for i, action in enumerate(rule.actions):
            templates = compiled.templates[i] if compiled.templates else {}
            try:
                # Without templates the payload is not even parsed.
                rendered = (
                    render_action(
                        str(type(action).__struct_config__.tag), action, templates, context(facts)
                    )
                    if templates
                    else {}
                )
            except RenderError as exc:
                # Never run with a blank: the action is left out, and the record says why.
                field, _, why = str(exc).partition(": ")
                skipped.append(ev.ActionSkipped(rule=rule.name, action=i, field=field, reason=why))
                metrics.SKIPPED.labels(rule=rule.name).inc()
                continue
            if rendered:
                action = msgspec.structs.replace(action, **rendered)
            requests.append(_request(event, hook, replay_of, rule, i, action))
    if projects and hook.image is not None:
        # An image push also redeploys the stages of the projects of its image.
        env = _context(event, hook, replay_of)
        requests.extend(project_requests(projects, event, hook, env))
    if not requests and not skipped and not record_unmatched:
        # Nothing to do, and nothing recorded: the webhook itself is in the log, and what
        # the rules make of it can be evaluated again at any time.
        return []
    routed = ev.make_event(
        ev.WebhookRouted(
            source=hook.source,
            event_type=hook.event_type,
            webhook_id=event.id,
            matched=[e.rule for e in evaluations if e.matched],
            evaluations=evaluations,
            requested=[r.id for r in requests],
            replay_of=replay_of,
            config_version=ruleset.version,
            skipped=skipped,
        ),
        source=SOURCE,
        id=ev.derived_id(event.id, "routed"),
        cause=event,
        subject=event.subject,
    )
    return [routed, *requests]


def route(
    rules: Rules,
    hook: Event[WebhookReceived],
    *,
    record_unmatched: bool = True,
    projects: Mapping[str, Project] | None = None,
) -> list[Event[Any]]:
    """Evaluate every rule (and, for an image push, the projects); return the routing
    record followed by the requests it makes (nothing at all for a webhook no rule
    matches, unless ``record_unmatched``)."""
    return _route(rules, hook, hook.data, None, record_unmatched, projects)


def route_replay(
    rules: Rules,
    replay: Event[WebhookReplayed],
    *,
    record_unmatched: bool = True,
    projects: Mapping[str, Project] | None = None,
) -> list[Event[Any]]:
    """Route a replayed webhook exactly as the original, as a new chain of its own."""
    webhook = replay.data.webhook
    return _route(rules, replay, webhook, replay.data.replay_of, record_unmatched, projects)


def make_handler(
    rules: Rules | Callable[[], RuleSet],
    *,
    record_unmatched: bool = False,
    projects: Mapping[str, Project] | None = None,
) -> Handler:
    """The router's handler. ``rules`` may be a callable giving the current RuleSet (read
    once per event, so a reload applies from the next event on)."""
    if callable(rules):
        current = rules
    else:
        fixed = RuleSet.of(rules)

        def current() -> RuleSet:
            return fixed

    async def handle(incoming: Incoming) -> AsyncIterator[Yielded]:
        event = incoming.event
        ruleset = current()
        match event.data:
            case WebhookReceived():
                routed = route(ruleset, event, record_unmatched=record_unmatched, projects=projects)
                if not routed:
                    metrics.UNMATCHED.inc()
                yield routed
            case WebhookReplayed():
                # A replay asked for by a person is always answered with a record.
                yield route_replay(ruleset, event, projects=projects)
            case _:
                raise PermanentError(f"router cannot handle {event.type}")

    return handle
