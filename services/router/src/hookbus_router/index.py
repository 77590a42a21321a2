"""Rules indexed by source, event type and repository, so that routing an event
evaluates only the rules that can match it, with the same decisions as evaluating every
rule.

A rule's first tests are ``enabled`` and its ``source``, ``event`` and ``repository``
globs (each part's, for a rule over several events). Whether they pass depends on the
event's (source, event type, repository) alone, so they are run once per such triple:
the rules that pass are its candidates, and the others' evaluation (they fail at one of
those tests, and read nothing else of the event) is kept. Routing an event then
evaluates its triple's candidates only and takes the others' kept evaluations: exactly
the list the plain evaluation of every rule gives (tests/unit/test_rule_index.py
compares them). The triples kept are bounded (the least recently used go first), and so
are the evaluations they keep (shared between triples: about 20 MB for 1,000 rules
over 100 repositories, at most about 80 MB).

Each triple also keeps its candidates grouped by the first test of their conditions
(gates.py), and the others grouped as a routing record names them (rules.passed_over).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from hookbus_common.events import RuleEvaluation, RulesPassedOver, WebhookReceived

from .gates import Gates
from .rules import Summarised, passed_over

if TYPE_CHECKING:
    from .rules import CompiledRule, Facts, Key, Member

# (source, event type, repository) triples whose candidates and evaluations are kept.
TRIPLES_KEPT: Final = 1024
# Distinct kept evaluations (shared by the triples: a rule that fails at its source
# glob fails the same way for every triple of that source); past this, both are dropped
# and found again.
EVALUATIONS_KEPT: Final = 200_000

Triple = tuple[str, str, str | None]


def _passes(compiled: CompiledRule, triple: Triple) -> bool:
    seen = dict(zip(("source", "event_type", "repository"), triple, strict=True))
    return all(passes(seen[attr]) for _, attr, passes in compiled.globs if attr in seen)


def _candidate(compiled: CompiledRule, triple: Triple) -> bool:
    if not compiled.rule.enabled:
        return False
    if compiled.multi is not None:
        return any(_passes(p.compiled, triple) for p in compiled.multi.parts)
    return _passes(compiled, triple)


@dataclass(frozen=True, slots=True)
class _Pair:
    candidates: tuple[int, ...]
    # The candidates as evaluated (gates.py: those ruled out together by a first test).
    gates: Gates
    # Every rule's evaluation by position: the others' (kept from the first event of the
    # pair; they depend on nothing else), None for the candidates.
    kept: tuple[RuleEvaluation | None, ...]
    # A routing record's view of the others (rules.passed_over): the positions recorded
    # one by one, and the groups (the candidates' are found per event).
    individual: tuple[int, ...]
    passed_over: tuple[tuple[int, RulesPassedOver], ...]


@dataclass(slots=True)
class RuleIndex:
    rules: tuple[CompiledRule, ...]
    _triples: OrderedDict[Triple, _Pair] = field(default_factory=OrderedDict)
    _kept: dict[tuple[int, str, str | None], RuleEvaluation] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: Sequence[CompiledRule]) -> RuleIndex:
        return cls(tuple(rules))

    def _pair(self, hook: WebhookReceived, facts: Facts) -> _Pair:
        key = (hook.source, hook.event_type, hook.repository)
        pair = self._triples.get(key)
        if pair is not None:
            self._triples.move_to_end(key)
            return pair
        candidates: list[int] = []
        kept: list[RuleEvaluation | None] = []
        for i, compiled in enumerate(self.rules):
            if _candidate(compiled, key):
                candidates.append(i)
                kept.append(None)
            else:
                # It fails at enabled, source, event or repository: nothing else of the
                # event is read.
                result = compiled.evaluate(hook, facts)
                kept.append(self._kept.setdefault((i, result.reason, result.failed), result))
        if len(self._kept) > EVALUATIONS_KEPT:
            self._kept.clear()
            self._triples.clear()
        # The others fail at what the candidates pass: no group holds both.
        alone, together = passed_over(((i, e) for i, e in enumerate(kept) if e is not None), hook)
        others = [i for i, _ in alone]
        gates = Gates.build(self.rules, candidates)
        pair = _Pair(tuple(candidates), gates, tuple(kept), tuple(others), tuple(together))
        self._triples[key] = pair
        while len(self._triples) > TRIPLES_KEPT:
            self._triples.popitem(last=False)
        return pair

    def evaluate(self, hook: WebhookReceived, facts: Facts) -> list[RuleEvaluation]:
        """Every rule's evaluation, in order, evaluating only the candidates."""
        return self.evaluate_matched(hook, facts)[0]

    def evaluate_matched(
        self, hook: WebhookReceived, facts: Facts
    ) -> tuple[list[RuleEvaluation], list[int]]:
        """Every rule's evaluation, in order, and the positions of the rules that matched
        (candidates all: no other rule can)."""
        pair = self._pair(hook, facts)
        out = list(pair.kept)
        matched = pair.gates.evaluate(self.rules, hook, facts, out)
        return out, matched  # type: ignore[return-value]  # every None was a candidate's

    def evaluate_summarised(self, hook: WebhookReceived, facts: Facts) -> Summarised:
        """RuleSet.evaluate_summarised: the others' groups are kept with the webhook's
        triple; the candidates' are found now, those the gates rule out together without
        an evaluation each."""
        pair = self._pair(hook, facts)
        out = list(pair.kept)
        grouped: dict[Key, list[Member]] = {}
        matched = pair.gates.evaluate(self.rules, hook, facts, out, grouped)
        evaluated = ((i, e) for i in pair.candidates if (e := out[i]) is not None)
        mine, groups = passed_over(evaluated, hook, grouped)
        kept = [(i, e) for i in pair.individual if (e := pair.kept[i]) is not None]
        individual = sorted((*kept, *mine), key=lambda m: m[0])
        together = sorted((*pair.passed_over, *groups), key=lambda g: g[0])
        return Summarised(out, matched, [e for _, e in individual], [g for _, g in together])

    def candidates_seen(self) -> float:
        """The mean number of candidates of the triples kept (for the bench)."""
        pairs = list(self._triples.values())
        return sum(len(p.candidates) for p in pairs) / len(pairs) if pairs else 0.0
