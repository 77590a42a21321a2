"""Rule matching: which configured rules a recorded webhook matches, and why or why not."""

from __future__ import annotations

from fnmatch import fnmatchcase

from hookbus_common.events import RuleEvaluation, WebhookReceived

from .config import Rule


def _check(field: str, pattern: str, value: str | None) -> str | None:
    """None when ``value`` matches the glob ``pattern``, else the reason it does not."""
    if pattern == "*":
        return None
    if value is None:
        return f"{field}: the event has none (rule wants {pattern!r})"
    if not fnmatchcase(value, pattern):
        return f"{field}: {value!r} does not match {pattern!r}"
    return None


def evaluate(rule: Rule, hook: WebhookReceived) -> RuleEvaluation:
    if not rule.enabled:
        return RuleEvaluation(rule=rule.name, matched=False, reason="rule is disabled")
    for field, pattern, value in (
        ("source", rule.source, hook.source),
        ("event", rule.event, hook.event_type),
        ("repository", rule.repository, hook.repository),
        ("branch", rule.branch, hook.branch),
    ):
        reason = _check(field, pattern, value)
        if reason is not None:
            return RuleEvaluation(rule=rule.name, matched=False, reason=reason)
    return RuleEvaluation(rule=rule.name, matched=True, reason="matched")
