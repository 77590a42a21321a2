"""The router's handler: a recorded webhook in, its routing record and requests out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_common.consumer import Handler, Incoming, Yielded
from hookbus_common.errors import PermanentError
from hookbus_common.events import (
    Event,
    JobFailed,
    JobInterrupted,
    JobSkipped,
    JobSucceeded,
    WebhookReceived,
    WebhookReplayed,
)

from . import metrics, sequence, waits
from . import projects as projects_
from .config import (
    Action,
    ComposeAction,
    DockerAction,
    HealthCheck,
    NotifyAction,
    Rule,
    ShellAction,
    SshAction,
    WebhookAction,
    job_backoff,
)
from .projects import Project
from .projects import requests as project_requests
from .rules import Facts, RuleSet, context, summarise
from .templates import RenderError, render_action

SOURCE = "/hookbus/router"
# What the router consumes, as subject tokens under the prefix: webhooks as received, and
# replays of them (two filters on one durable need NATS 2.10 or later); and how jobs
# ended, for rules whose actions run in sequence (sequence.py).
FILTER_TOKENS: tuple[tuple[str, ...], ...] = (
    ("webhook", "received"),
    ("webhook", "replayed"),
    # Only the ends of jobs in a sequence: their subjects end in ``.seq.<rule>`` (the
    # ends of every other job are none of the router's business, and cost it nothing).
    ("job", "succeeded", "*", "seq"),
    ("job", "failed", "*", "seq"),
    ("job", "interrupted", "*", "seq"),
    ("job", "skipped", "*", "seq"),
    # A rule run by hand (the operator API's trigger).
    ("rule", "triggered"),
)


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


def _limits(action: ShellAction | SshAction | DockerAction | ComposeAction) -> dict[str, Any]:
    """The job's concurrency (its key rendered already) and retries, as the request's."""
    out: dict[str, Any] = {}
    if action.concurrency is not None:
        c = action.concurrency
        out["concurrency"] = ev.Concurrency(key=c.key, strategy=c.strategy)
    if action.retries:
        out["retries"] = action.retries
        backoff = job_backoff(action, "backoff")
        if backoff is not None:
            out["backoff"] = ev.Backoff(base=backoff[0], max=backoff[1])
    return out


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
    step_of: ev.SequenceStep | None = None,
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
                **_limits(action),
                on_interrupt=action.on_interrupt,
                sequence=step_of,
            )
        case WebhookAction(endpoints="subscribed"):
            # The dispatcher knows the tenant's endpoints (run-time ones too): it fans out.
            data = ev.MessageSubmitted(
                message_id=ev.derived_id(event.id, f"message/{step}", prefix="msg"),
                event_type=hook.event_type,
                payload=hook.payload,
                tenant=event.tenant,
                submitted_by=f"rule:{rule.name}",
                rule=rule.name,
                webhook_id=event.id,
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
        case NotifyAction():
            # The same kind of request as a webhook: the same retries and dead letters.
            data = ev.DeliveryRequested(
                delivery_id=ev.derived_id(event.id, f"delivery/{step}", prefix="dlv"),
                rule=rule.name,
                webhook_id=event.id,
                url="",
                body=hook.payload,
                tenant=event.tenant,
                event_type=hook.event_type,
                notification=action.channel,
                context=_context(event, hook, replay_of),
            )
    return ev.make_event(
        data, source=SOURCE, id=ev.derived_id(event.id, f"request/{step}"), cause=event
    )


# The request for one action (sequence.py requests a sequence's later actions with it).
request_for = _request

Rules = Sequence[Rule] | RuleSet


def _route(
    rules: Rules,
    event: Event[Any],
    hook: WebhookReceived,
    replay_of: str | None,
    record_unmatched: bool,
    projects: Mapping[str, Project] | None = None,
    joined: Mapping[str, waits.Joined] | None = None,
    facts: Facts | None = None,
    creation: projects_.Creation | None = None,
    forced: ev.RuleTriggered | None = None,
    summarised: bool = False,
) -> list[Event[Any]]:
    # Every id derives from the routed event's: a webhook's redelivery derives the same
    # ones (and is refused as a duplicate), while a replay, a new event, makes new ones.
    ruleset = RuleSet.of(rules)
    if facts is None:
        facts = Facts(hook, event_id=event.id, tenant=event.tenant, time=event.time.isoformat())
    summary = None
    if forced is None and summarised and not joined:
        # The rules that failed the same test on the same value are named together: of
        # a thousand rules, most are (and the index makes no evaluation for some).
        summary = ruleset.evaluate_summarised(hook, facts)
        evaluations: list[ev.RuleEvaluation] = []  # the summary's are all it records
        matched = summary.matched
    elif forced is None:
        evaluations, matched = ruleset.evaluate_matched(hook, facts)
    else:
        evaluations = _triggered(ruleset, forced)
        matched = [i for i, e in enumerate(evaluations) if e.matched]
    joined = joined or {}
    if joined:
        # Multi-event rules: what this event did to their waits (waits.arrive_all).
        evaluations = list(evaluations)
        replaced = set()
        for name, j in joined.items():
            at = ruleset.position(name)
            if at is not None:
                evaluations[at] = j.evaluation
                replaced.add(at)
        matched = sorted(
            {i for i in matched if i not in replaced}
            | {i for i in replaced if evaluations[i].matched}
        )
    requests: list[Event[Any]] = []
    skipped: list[ev.ActionSkipped] = []
    # Only the rules that matched are looked at again (of a thousand rules, a few).
    for position in matched:
        compiled = ruleset.rules[position]
        rule = compiled.rule
        firing = joined.get(rule.name)
        ctx = firing.context if firing is not None and firing.context is not None else None
        # A sequence requests its first action only; each success requests the next.
        step_of = (
            sequence.first_step(rule, ruleset.version, firing.events if firing else None)
            if rule.sequence
            else None
        )
        for i, action in enumerate(rule.actions[:1] if rule.sequence else rule.actions):
            templates = compiled.templates[i] if compiled.templates else {}
            try:
                # Without templates the payload is not even parsed.
                rendered = (
                    render_action(
                        str(type(action).__struct_config__.tag),
                        action,
                        templates,
                        context(facts) if ctx is None else ctx,
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
            requests.append(_request(event, hook, replay_of, rule, i, action, step_of))
    if (projects or creation) and hook.image is not None:
        # An image push also redeploys the stages of the projects of its image (or makes
        # a project of an image no project names).
        env = _context(event, hook, replay_of)
        requests.extend(project_requests(projects or {}, event, hook, env, creation))
    if not requests and not skipped and not record_unmatched and not joined:
        # Nothing to do, and nothing recorded: the webhook itself is in the log, and what
        # the rules make of it can be evaluated again at any time.
        return []
    passed_over: list[ev.RulesPassedOver] = []
    decisions = evaluations
    if summary is not None:
        decisions, passed_over = summary.decisions, summary.passed_over
    elif summarised and forced is None:
        decisions, passed_over = summarise(evaluations, hook)
    routed = ev.make_event(
        ev.WebhookRouted(
            source=hook.source,
            event_type=hook.event_type,
            webhook_id=event.id,
            matched=[ruleset.rules[i].rule.name for i in matched],
            evaluations=decisions,
            passed_over=passed_over,
            requested=[r.id for r in requests],
            replay_of=replay_of,
            config_version=ruleset.version,
            skipped=skipped,
            joined=[
                ev.JoinedEvents(rule=name, key=j.key or "", events=j.events)
                for name, j in joined.items()
                if j.fired
            ],
        ),
        source=SOURCE,
        id=routed_id(event.id),
        cause=event,
        subject=event.subject,
    )
    return [routed, *requests]


def _triggered(ruleset: RuleSet, by_hand: ev.RuleTriggered) -> list[ev.RuleEvaluation]:
    """A rule run by hand matches whatever its conditions say; the others are not run."""
    return [
        ev.RuleEvaluation(rule=c.rule.name, matched=True, reason=f"triggered by {by_hand.by}")
        if c.rule.name == by_hand.rule
        else ev.RuleEvaluation(rule=c.rule.name, matched=False, reason="not triggered")
        for c in ruleset.rules
    ]


def route_triggered(rules: Rules, event: Event[ev.RuleTriggered]) -> list[Event[Any]]:
    """Request a rule's actions by hand: the record (the rule matched, or none did when
    the router has no such rule now) and the requests, ids derived from the trigger's."""
    hook = event.data.webhook
    return _route(rules, event, hook, None, True, forced=event.data)


def route(
    rules: Rules,
    hook: Event[WebhookReceived],
    *,
    record_unmatched: bool = True,
    projects: Mapping[str, Project] | None = None,
    summarised: bool = False,
) -> list[Event[Any]]:
    """Evaluate every rule (and, for an image push, the projects); return the routing
    record followed by the requests it makes (nothing at all for a webhook no rule
    matches, unless ``record_unmatched``). ``summarised``: the record names the rules
    passed over by their source, event type or repository together, as the router's
    records do, instead of one decision each."""
    return _route(rules, hook, hook.data, None, record_unmatched, projects, summarised=summarised)


def route_replay(
    rules: Rules,
    replay: Event[WebhookReplayed],
    *,
    record_unmatched: bool = True,
    projects: Mapping[str, Project] | None = None,
    summarised: bool = False,
) -> list[Event[Any]]:
    """Route a replayed webhook exactly as the original, as a new chain of its own."""
    webhook = replay.data.webhook
    return _route(
        rules, replay, webhook, replay.data.replay_of, record_unmatched, projects,
        summarised=summarised,
    )  # fmt: skip


def routed_id(event_id: str) -> str:
    """The id of the routing record of the webhook (or replay) ``event_id``."""
    return ev.derived_id(event_id, "routed")


def make_handler(
    rules: Rules | Callable[[], RuleSet],
    *,
    record_unmatched: bool = False,
    projects: Mapping[str, Project] | None = None,
    store: waits.Store | None = None,
    clock: Callable[[], datetime] = waits.now,
    created: projects_.Created | None = None,
    routed_before: Callable[[str], Awaitable[bool]] | None = None,
) -> Handler:
    """The router's handler. ``rules`` may be a callable giving the current RuleSet (read
    once per event, so a reload applies from the next event on). ``store`` holds the
    waits of multi-event rules and reads the log for sequences; without one, multi-event
    rules never fire and sequences never go past their first action. ``routed_before``
    says whether an event's routing record is in the log: a webhook delivered again after
    its routing was committed is not routed a second time (under rules changed since, that
    would request actions the first routing did not)."""
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
            case WebhookReceived() | WebhookReplayed():
                if (
                    incoming.deliveries > 1
                    and routed_before is not None
                    and await routed_before(event.id)
                ):
                    yield []  # routed already; its ack was lost, or its router died
                    return
                data = event.data
                replay = isinstance(data, WebhookReplayed)
                hook = data.webhook if isinstance(data, WebhookReplayed) else data
                replay_of = data.replay_of if isinstance(data, WebhookReplayed) else None
                t = event.time.isoformat()
                facts = Facts(hook, event_id=event.id, tenant=event.tenant, time=t)
                joined = (
                    await waits.arrive_all(ruleset.waiting, event, hook, facts, store, clock)
                    if store is not None and ruleset.multi
                    else None
                )
                known, creation = projects, None
                if created is not None and hook.image is not None:
                    # Projects made from images live in Postgres; an image no project names
                    # may make one.
                    known, creation = await created.resolve(projects or {}, hook.image)
                # A replay asked for by a person is always answered with a record.
                routed = _route(
                    ruleset, event, hook, replay_of, record_unmatched or replay, known,
                    joined, facts, creation, summarised=True,
                )  # fmt: skip
                if not routed:
                    metrics.UNMATCHED.inc()
                yield routed
            case JobSucceeded() | JobFailed() | JobInterrupted() | JobSkipped():
                yield [] if store is None else await sequence.advance(ruleset, event, store)
            case ev.RuleTriggered():
                yield route_triggered(ruleset, event)
            case _:
                raise PermanentError(f"router cannot handle {event.type}")

    return handle
