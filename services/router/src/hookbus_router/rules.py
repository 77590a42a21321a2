"""Rule matching: which configured rules a recorded webhook matches, and why or why not.

A ``RuleSet`` is the rules compiled once (their conditions and templates) with the short
hash that names this version of them; the router routes every event with one RuleSet, and
a reload swaps in a new one whole.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

import msgspec

from hookbus_common.errors import ConfigError
from hookbus_common.events import RuleEvaluation, RulesPassedOver, WebhookReceived

from . import conditions, templates
from .conditions import Node, Outcome, shown

if TYPE_CHECKING:
    from .config import Action, Rule
    from .index import RuleIndex
    from .waits import MultiEvent


def _patterns(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


_EVENT_FACT = {"source": "source", "event": "type", "repository": "repository", "branch": "branch"}


def glob_passes(value: str | list[str], seen: str | None) -> bool:
    """Whether ``seen`` passes a rule's glob (or list of globs) ``value``."""
    patterns = _patterns(value)
    return "*" in patterns or (seen is not None and any(fnmatchcase(seen, p) for p in patterns))


def glob_matcher(value: str | list[str]) -> Callable[[str | None], bool] | None:
    """``glob_passes(value, ·)`` compiled once: None when every value passes (``*``), else
    a test that looks names without a wildcard up in a set and runs the others' regexes."""
    patterns = _patterns(value)
    if "*" in patterns:
        return None
    exact = frozenset(p for p in patterns if not any(ch in p for ch in "*?["))
    globs = tuple(re.compile(fnmatch.translate(p)).match for p in patterns if p not in exact)

    def passes(seen: str | None) -> bool:
        return seen is not None and (seen in exact or any(g(seen) for g in globs))

    return passes


def _glob_reason(name: str, value: str | list[str], seen: str | None) -> str:
    wanted = repr(value) if isinstance(value, str) else f"one of {value!r}"
    if seen is None:
        return f"{name}: the event has none (rule wants {wanted})"
    return f"{name}: {seen!r} does not match {wanted}"


def _evaluation(rule: str, outcome: Outcome, reason: str | None = None) -> RuleEvaluation:
    return RuleEvaluation(
        rule=rule,
        matched=False,
        reason=reason or outcome.reason(),
        failed=outcome.at,
        path=outcome.path,
        operator=outcome.operator,
        saw=outcome.saw,
    )


# ------------------------------------------------------------- rules passed over

# A routing record names together the rules that failed the same test on the same value
# (two or more): their source, event type, repository or branch glob, their being
# disabled, or the same test of their conditions (``when…``) on the same value. A rule
# over several events keeps its own decision (it says what its waits did).
_GLOBS: Final = frozenset({"source", "event", "repository", "branch"})
_HOOK_FACT: Final = {
    "source": "source",
    "event": "event_type",
    "repository": "repository",
    "branch": "branch",
}

Key = tuple[str, str | None, str | None, str | None]


def _together(failed: str | None) -> bool:
    return failed is not None and (
        failed in _GLOBS or failed == "enabled" or failed.startswith("when")
    )


# A rule in a group: its position, name and decision's reason, and its evaluation when
# there is one (gates.py rules some out without making one).
Member = tuple[int, str, str, RuleEvaluation | None]


def _passed_over(key: Key, members: list[Member], hook: WebhookReceived) -> RulesPassedOver:
    failed, path, operator, saw = key
    if failed == "enabled":
        reason = "rules are disabled"
    elif failed in _GLOBS:
        seen = getattr(hook, _HOOK_FACT[failed])
        reason = (
            f"{failed}: the event has none"
            if seen is None
            else f"{failed}: {seen!r} matches none of theirs"
        )
    else:
        reason = members[0][2]  # a condition's: the same test, the same value
    return RulesPassedOver(
        rules=[name for _, name, _, _ in members],
        reason=reason,
        failed=failed,
        path=path,
        operator=operator,
        saw=saw,
    )


def _alone(key: Key, member: Member) -> RuleEvaluation:
    _, name, reason, evaluation = member
    if evaluation is not None:
        return evaluation
    failed, path, operator, saw = key
    return RuleEvaluation(
        rule=name, matched=False, reason=reason, failed=failed, path=path, operator=operator,
        saw=saw,
    )  # fmt: skip


def passed_over(
    evaluations: Iterable[tuple[int, RuleEvaluation]],
    hook: WebhookReceived,
    grouped: Mapping[Key, list[Member]] | None = None,
) -> tuple[list[tuple[int, RuleEvaluation]], list[tuple[int, RulesPassedOver]]]:
    """Of rules' evaluations by position (and of rules ``grouped`` already by the test
    they failed and the value it saw): the evaluations recorded one by one, and the rules
    that failed the same test on the same value, together, each with its first rule's
    position; both in order of position. A rule alone keeps its own decision."""
    individual: list[tuple[int, RuleEvaluation]] = []
    groups: dict[Key, list[Member]] = {k: list(v) for k, v in (grouped or {}).items()}
    for i, e in evaluations:
        if e.failed is not None and _together(e.failed):
            key = (e.failed, e.path, e.operator, e.saw)
            groups.setdefault(key, []).append((i, e.rule, e.reason, e))
        else:
            individual.append((i, e))
    together = []
    for key, members in groups.items():
        if grouped:
            members.sort(key=lambda m: m[0])
        if len(members) == 1:
            individual.append((members[0][0], _alone(key, members[0])))
        else:
            together.append((members[0][0], _passed_over(key, members, hook)))
    individual.sort(key=lambda m: m[0])
    together.sort(key=lambda m: m[0])
    return individual, together


def summarise(
    evaluations: Sequence[RuleEvaluation], hook: WebhookReceived
) -> tuple[list[RuleEvaluation], list[RulesPassedOver]]:
    """A routing record's decisions: the evaluations recorded one by one, in order, and
    the rules that failed the same test on the same value, grouped (``passed_over``)."""
    individual, together = passed_over(enumerate(evaluations), hook)
    return [e for _, e in individual], [g for _, g in together]


# ------------------------------------------------------------------ what rules see


def _payload(hook: WebhookReceived) -> Any:
    raw = bytes(hook.payload)
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return raw.decode("utf-8", "replace")


class Facts:
    """What conditions and templates see of one webhook, built at most once per event:
    ``payload`` (parsed JSON, or the text when it is not JSON), ``event`` and ``headers``."""

    __slots__ = ("_doc", "_event_id", "_hook", "_tenant", "_time")

    def __init__(
        self,
        hook: WebhookReceived,
        *,
        event_id: str = "",
        tenant: str = "default",
        time: str | None = None,
    ) -> None:
        self._hook = hook
        self._event_id = event_id
        self._tenant = tenant
        self._time = time
        self._doc: dict[str, Any] | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            hook = self._hook
            self._doc = {
                "payload": _payload(hook),
                "event": {
                    "type": hook.event_type,
                    "id": self._event_id,
                    "source": hook.source,
                    "kind": hook.kind,
                    "delivery_id": hook.delivery_id,
                    "repository": hook.repository,
                    "branch": hook.branch,
                    "tag": hook.tag,
                    "commit": hook.commit,
                    "sender": hook.sender,
                    "image": msgspec.to_builtins(hook.image) if hook.image else None,
                    "time": self._time,
                    "tenant": self._tenant,
                },
                "headers": dict(hook.headers),
            }
        return self._doc


# ------------------------------------------------------------------------ compiling


_KEYS: tuple[tuple[str, str], ...] = (
    ("source", "source"),
    ("event", "event_type"),
    ("repository", "repository"),
    ("branch", "branch"),
)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    condition: Node | None
    # Per action (by index): its templates by field path.
    templates: tuple[dict[str, templates.Template], ...] = field(default=())
    # A rule over several events: its parts, key and window (waits.py).
    multi: MultiEvent | None = None
    # The rule's source, event, repository and branch globs compiled (glob_matcher), with
    # the name of the fact each reads; the ones every value passes are left out.
    globs: tuple[tuple[str, str, Callable[[str | None], bool]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rule = self.rule
        compiled = []
        for name, attr in _KEYS:
            passes = glob_matcher(getattr(rule, name))
            if passes is not None:
                compiled.append((name, attr, passes))
        object.__setattr__(self, "globs", tuple(compiled))

    def evaluate(self, hook: WebhookReceived, facts: Facts | None = None) -> RuleEvaluation:
        rule = self.rule
        if not rule.enabled:
            return RuleEvaluation(
                rule=rule.name, matched=False, reason="rule is disabled", failed="enabled"
            )
        if self.multi is not None:
            # Alone, an event never fires it: the router's waits do (see waits.py).
            return self.multi.match(hook, facts or Facts(hook))[1]
        return self._rest(hook, facts, self.globs)

    def evaluate_candidate(self, hook: WebhookReceived, facts: Facts) -> RuleEvaluation:
        """``evaluate`` for a rule known to be enabled and to pass the event's source,
        event type and repository (the index's candidates): the branch and the
        condition are all that is left to test."""
        if self.multi is not None:
            return self.multi.match(hook, facts)[1]
        globs = self.globs
        return self._rest(hook, facts, globs[-1:] if globs and globs[-1][0] == "branch" else ())

    def _rest(
        self,
        hook: WebhookReceived,
        facts: Facts | None,
        globs: tuple[tuple[str, str, Callable[[str | None], bool]], ...],
    ) -> RuleEvaluation:
        rule = self.rule
        for name, attr, passes in globs:
            seen = getattr(hook, attr)
            if not passes(seen):
                value = getattr(rule, name)
                missed = Outcome(False, name, f"event.{_EVENT_FACT[name]}", "glob", shown(seen))
                return _evaluation(rule.name, missed, _glob_reason(name, value, seen))
        if self.condition is not None:
            outcome = self.condition.test((facts or Facts(hook)).doc)
            if not outcome.held:
                return _evaluation(rule.name, outcome)
        return RuleEvaluation(rule=rule.name, matched=True, reason="matched")


def _kind(action: Action) -> str:
    return str(type(action).__struct_config__.tag)


def compile_rule(rule: Rule, at: str) -> CompiledRule:
    """Compile a rule's condition and templates; ConfigError names ``at``, the rule and
    the bad part: ``rules[2] "deploy": when.all[1]: unknown operator …``."""
    from . import sequence, waits

    where = f'{at} "{rule.name}"'
    check_globs(rule, where)
    try:
        condition = (
            conditions.compile_condition(rule.when, "when") if rule.when is not None else None
        )
        compiled = tuple(
            templates.compile_action(_kind(a), a, f"actions[{i}]")
            for i, a in enumerate(rule.actions)
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    multi = waits.compile_multi(rule, where)
    sequence.check(rule, where)
    return CompiledRule(rule, condition, compiled, multi)


def check_globs(rule: Rule, where: str) -> None:
    for name in ("source", "event", "repository", "branch"):
        value = getattr(rule, name)
        if isinstance(value, list) and not value:
            raise ConfigError(f"{where}: {name}: an empty list matches nothing; leave it out")


def version(rules: Iterable[Rule]) -> str:
    """A short hash naming this version of the rules (recorded with every decision)."""
    return hashlib.sha256(msgspec.json.encode(list(rules))).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Summarised:
    """RuleSet.evaluate_summarised's answer."""

    evaluations: Sequence[RuleEvaluation | None]
    matched: list[int]
    decisions: list[RuleEvaluation]
    passed_over: list[RulesPassedOver]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]
    version: str
    # The rules by source and event type (index.py); None: every rule is evaluated.
    index: RuleIndex | None = None
    # Derived from ``rules`` once: the rules over several events, the rules by name, and
    # their positions by name.
    _extra: tuple[tuple[CompiledRule, ...], dict[str, CompiledRule], dict[str, int]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        waiting = tuple(r for r in self.rules if r.multi is not None)
        named = {r.rule.name: r for r in self.rules}
        at = {r.rule.name: i for i, r in enumerate(self.rules)}
        object.__setattr__(self, "_extra", (waiting, named, at))

    def evaluate(self, hook: WebhookReceived, facts: Facts) -> list[RuleEvaluation]:
        """Every rule's evaluation of ``hook``, in order (the same with or without the
        index; with it, only the rules that can match are evaluated)."""
        return self.evaluate_matched(hook, facts)[0]

    def evaluate_summarised(self, hook: WebhookReceived, facts: Facts) -> Summarised:
        """What a routing record that names rules together needs: ``evaluate_matched``
        (with the index, the evaluations of rules it named together may be None) and
        ``summarise`` of its evaluations."""
        if self.index is not None:
            return self.index.evaluate_summarised(hook, facts)
        evaluations, matched = self.evaluate_matched(hook, facts)
        return Summarised(evaluations, matched, *summarise(evaluations, hook))

    def evaluate_matched(
        self, hook: WebhookReceived, facts: Facts
    ) -> tuple[list[RuleEvaluation], list[int]]:
        """``evaluate``, and the positions of the rules that matched, in order."""
        if self.index is not None:
            return self.index.evaluate_matched(hook, facts)
        out = [r.evaluate(hook, facts) for r in self.rules]
        return out, [i for i, e in enumerate(out) if e.matched]

    @property
    def multi(self) -> bool:
        """Whether any rule waits for several events."""
        return bool(self.waiting)

    @property
    def waiting(self) -> tuple[CompiledRule, ...]:
        """The rules over several events (waits.py), in order."""
        return self._extra[0]

    def named(self, name: str) -> CompiledRule | None:
        return self._extra[1].get(name)

    def position(self, name: str) -> int | None:
        """Where the rule ``name`` is in ``rules`` (None: no such rule)."""
        return self._extra[2].get(name)

    @classmethod
    def build(cls, rules: Sequence[Rule], *, indexed: bool = True) -> RuleSet:
        from .index import RuleIndex

        compiled = tuple(compile_rule(r, f"rules[{i}]") for i, r in enumerate(rules))
        return cls(compiled, version(rules), RuleIndex.build(compiled) if indexed else None)

    @classmethod
    def of(cls, rules: Sequence[Rule] | RuleSet) -> RuleSet:
        return rules if isinstance(rules, RuleSet) else cls.build(rules)


def evaluate(
    rule: Rule | CompiledRule, hook: WebhookReceived, facts: Facts | None = None
) -> RuleEvaluation:
    compiled = rule if isinstance(rule, CompiledRule) else compile_rule(rule, "rule")
    return compiled.evaluate(hook, facts)


def context(facts: Facts) -> Mapping[str, Any]:
    """What templates see: the same names as conditions."""
    return facts.doc
