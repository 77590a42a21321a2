"""Rules whose actions run in sequence (``sequence = true``): one after another, each only
when the one before succeeded (see docs/rules.md, "Actions in sequence").

The router requests the first action only, with ``sequence = {rule, index, of}`` on its
job request. When the job's ``job.succeeded`` comes by, the router requests the next
action; a ``job.failed`` (or a ``job.interrupted`` that is not retried) ends the
sequence (so does a ``job.skipped``: a newer job of its ``latest`` concurrency key ran
instead), recorded as ``rule.sequence.ended`` with outcome ``stopped``; after the last
action it ends ``completed``. Nothing is kept in memory: what the next step needs is on
the job request (found in the log by the outcome's causation id) and in the rules. The
next request's ids derive from the routed webhook and the step exactly as for a rule run
all at once, so a redelivered outcome adds nothing.

Only job actions (shell, ssh, docker, compose) can be in a sequence: a webhook or notify
action's delivery is retried for hours by the dispatcher, which is no step to wait on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.events import (
    Event,
    JobFailed,
    JobInterrupted,
    JobRequestedV2,
    JobSkipped,
    JobSucceeded,
)

from .templates import RenderError, render_action

if TYPE_CHECKING:
    from .config import Rule
    from .rules import RuleSet
    from .waits import Store

SOURCE: Final = "/hookbus/router"
JOB_KINDS: Final = frozenset({"shell", "ssh", "docker", "compose"})


def _kind(action: Any) -> str:
    return str(type(action).__struct_config__.tag)


def check(rule: Rule, where: str) -> None:
    """A sequence holds job actions only; ConfigError names the action that is not."""
    if not rule.sequence:
        return
    for i, action in enumerate(rule.actions):
        kind = _kind(action)
        if kind not in JOB_KINDS:
            raise ConfigError(
                f"{where}: actions[{i}]: a rule with sequence = true runs job actions only"
                f" (shell, ssh, docker, compose), not {kind!r}"
            )


def first_step(rule: Rule, version: str | None, events: list[str] | None = None) -> ev.SequenceStep:
    return ev.SequenceStep(
        rule=rule.name, index=0, of=len(rule.actions), config_version=version, events=events or []
    )


def ended(
    outcome: Event[Any],
    req: JobRequestedV2,
    step: ev.SequenceStep,
    result: str,
    index: int,
    reason: str | None = None,
) -> Event[ev.RuleSequenceEnded]:
    data = ev.RuleSequenceEnded(
        rule=step.rule,
        webhook_id=req.webhook_id,
        outcome="completed" if result == "completed" else "stopped",
        index=index,
        of=step.of,
        job_id=req.job_id,
        reason=reason,
    )
    return ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(req.webhook_id, f"sequence/{step.rule}/ended"),
        cause=outcome,
    )


def _why(data: JobFailed | JobInterrupted | JobSkipped) -> str:
    if isinstance(data, JobSkipped):
        return f"action {data.kind} was skipped ({data.reason})"
    if isinstance(data, JobInterrupted):
        return f"action {data.kind} was interrupted ({data.reason})"
    if data.error:
        return f"action failed: {data.error}"[:500]
    if data.timed_out:
        return "action timed out"
    if data.signal is not None:
        return f"action ended by signal {data.signal}"
    return f"action exited with code {data.exit_code}"


async def advance(ruleset: RuleSet, outcome: Event[Any], store: Store) -> list[Event[Any]]:
    """What a job's outcome does to its rule's sequence: the next request, the record of
    the sequence's end, or nothing (a job that is in no sequence)."""
    from . import routing, waits
    from .rules import Facts

    data = outcome.data
    if not isinstance(data, JobSucceeded | JobFailed | JobInterrupted | JobSkipped):
        return []
    if isinstance(data, JobInterrupted | JobFailed) and data.retrying:
        return []  # the next attempt follows (an interruption or failure retried)
    compiled = ruleset.named(data.rule)
    if compiled is None or not compiled.rule.sequence or outcome.causationid is None:
        return []  # no sequence: nothing read from the log at all
    found = await store.load([outcome.causationid])
    request = found.get(outcome.causationid)
    if request is None or not isinstance(request.data, JobRequestedV2):
        return []
    req = request.data
    step = req.sequence
    if step is None:
        return []
    if isinstance(data, JobFailed | JobInterrupted | JobSkipped):
        return [ended(outcome, req, step, "stopped", step.index, _why(data))]
    nxt = step.index + 1
    if nxt >= step.of:
        return [ended(outcome, req, step, "completed", step.index)]
    rule = compiled.rule
    if len(rule.actions) != step.of:
        why = (
            f"the rule changed while its sequence ran (it had {step.of} actions, now"
            f" {len(rule.actions)}); the rest was not requested"
        )
        return [ended(outcome, req, step, "stopped", step.index, why)]
    loaded = await store.load([req.webhook_id, *step.events])
    routed = loaded.get(req.webhook_id)
    hook = waits.hook_of(routed) if routed is not None else None
    if routed is None or hook is None:
        return [ended(outcome, req, step, "stopped", step.index, "its webhook is not in the log")]
    replay_of = routed.data.replay_of if isinstance(routed.data, ev.WebhookReplayed) else None
    action = rule.actions[nxt]
    templates = compiled.templates[nxt] if compiled.templates else {}
    if templates:
        facts = Facts(hook, event_id=routed.id, tenant=routed.tenant, time=routed.time.isoformat())
        context: dict[str, Any] = dict(facts.doc)
        if step.events:
            context["events"] = waits.event_docs(step.events, loaded)
        try:
            rendered = render_action(_kind(action), action, templates, context)
        except RenderError as exc:
            why = f"actions[{nxt}]: a template failed: {exc}"
            return [ended(outcome, req, step, "stopped", nxt, why)]
        action = msgspec.structs.replace(action, **rendered)
    following = msgspec.structs.replace(step, index=nxt, config_version=ruleset.version)
    event = routing.request_for(routed, hook, replay_of, rule, nxt, action, following)
    # The same ids as for a rule run at once; the chain (and its trace) goes on from this
    # outcome.
    return [
        msgspec.structs.replace(
            event,
            causationid=outcome.id,
            traceparent=outcome.traceparent,
            tracestate=outcome.tracestate,
        )
    ]
