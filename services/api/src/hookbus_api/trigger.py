"""Running a rule's actions by hand: the API records ``rule.triggered`` (who asked, the
payload given, as a webhook from source ``manual``) and the router requests the rule's
actions from it as for a matched webhook. Recorded like any event: in the log, on the bus,
and in the chain the actions' jobs and deliveries belong to."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from hookbus_common import events as ev
from hookbus_common.errors import InvalidError, NotFoundError
from hookbus_common.eventlog import Appended
from hookbus_common.service import Runtime

SOURCE = "/hookbus/api"
# The webhook a trigger stands in for comes from this source (HOOKBUS_SOURCE).
MANUAL = "manual"


class TriggerRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to run a rule's actions with: the payload they see (any JSON; templates read
    it as ``payload``), the event type (``HOOKBUS_EVENT_TYPE``), the facts of a push if
    the actions use them, and why (recorded)."""

    payload: Any = msgspec.field(default_factory=dict)
    event_type: str = MANUAL
    repository: str | None = None
    branch: str | None = None
    tag: str | None = None
    commit: str | None = None
    tenant: str | None = None
    reason: str | None = None


class RuleTriggerAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The trigger recorded: its event's id (the chain to follow), and whether the same
    ``Idempotency-Key`` was seen before (nothing recorded again)."""

    id: str
    rule: str
    duplicate: bool = False


def parse_trigger(body: bytes) -> TriggerRule:
    try:
        req = msgspec.json.decode(body or b"{}", type=TriggerRule)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidError(f"body: {exc}") from None
    if not req.event_type.strip():
        raise InvalidError("event_type: must not be empty")
    return req


def trigger_event(
    rule: str, req: TriggerRule, *, by: str, key: str | None
) -> ev.Event[ev.RuleTriggered]:
    """The ``rule.triggered`` event; with an idempotency key its id is derived from who
    asked, the rule and the key, so sending it again records nothing new."""
    payload = msgspec.json.encode(req.payload)
    hook = ev.WebhookReceived(
        source=MANUAL, kind=MANUAL, event_type=req.event_type, payload=msgspec.Raw(payload),
        body_sha256=hashlib.sha256(payload).hexdigest(), repository=req.repository,
        branch=req.branch, tag=req.tag, commit=req.commit, sender=by,
    )  # fmt: skip
    data = ev.RuleTriggered(rule=rule, by=by, webhook=hook, reason=req.reason)
    event_id = None if key is None else ev.derived_id(f"{by}/{rule}", f"trigger/{key}")
    return ev.make_event(data, source=SOURCE, id=event_id, tenant=req.tenant)


async def record_trigger(
    rt: Runtime,
    rules: Sequence[str],
    rule: str,
    req: TriggerRule,
    *,
    by: str,
    key: str | None = None,
) -> tuple[RuleTriggerAccepted, list[Appended]]:
    """Record the trigger of ``rule`` (one of ``rules``, the names configured); the caller
    publishes what was committed."""
    if rule not in rules:
        raise NotFoundError(f"no rule named {rule!r}")
    event = trigger_event(rule, req, by=by, key=key)
    new, known = await rt.outbox.commit([event])
    return RuleTriggerAccepted(id=event.id, rule=rule, duplicate=not new), [*new, *known]
