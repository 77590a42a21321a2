"""A webhook's candidate rules ruled out together by the first test of their conditions.

Many rules of one repository (or of every repository) differ by a test such as
``payload.ref glob "refs/heads/org-7/*"``: a rule whose condition starts with a glob, or
an equals with a text, on a path of fields (``Test.literal``), and that has no branch
test before it, cannot hold unless the text read there starts with the glob's head (or is
the text). So the rules are grouped by path, and their heads kept by length: per event,
the path is read once, a few dictionary lookups find the rules that may hold, and those
are evaluated as usual; every other one failed that first test, and its decision is
written down as its own evaluation would (the same test, path, operator and value seen).
A value that is not a text (a list, a number, nothing) evaluates every rule of the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hookbus_common.events import RuleEvaluation, WebhookReceived

from .conditions import All, Outcome, Test, shown

if TYPE_CHECKING:
    from .rules import CompiledRule, Facts, Key, Member


def gate_of(compiled: CompiledRule) -> Test | None:
    """The test a candidate's evaluation runs first, when gates.py can rule on it."""
    if compiled.multi is not None or compiled.condition is None:
        return None
    if compiled.globs and compiled.globs[-1][0] == "branch":
        return None  # the branch is tested before the condition
    node = compiled.condition
    while isinstance(node, All):
        node = node.children[0]
    if isinstance(node, Test) and node.fields is not None and node.literal is not None:
        return node
    return None


@dataclass(frozen=True, slots=True)
class _Path:
    fields: tuple[str, ...]
    rules: tuple[tuple[int, Test], ...]  # by position, in order
    # The rules by their first test's place, path and operator (which make its reason),
    # with their names.
    tests: tuple[tuple[tuple[str, str, str], tuple[tuple[int, str], ...]], ...]
    lengths: tuple[int, ...]  # the heads' lengths
    heads: dict[str, tuple[int, ...]]  # head -> the rules a text starting with it may hold
    whole: dict[str, tuple[int, ...]]  # text -> the rules only it may hold

    def possible(self, value: str) -> set[int]:
        out: set[int] = set(self.whole.get(value, ()))
        for n in self.lengths:
            out.update(self.heads.get(value[:n], ()))
        return out


@dataclass(frozen=True, slots=True)
class Gates:
    """A triple's candidates: those evaluated as usual, and those gated by path."""

    ungated: tuple[int, ...]
    paths: tuple[_Path, ...]

    @classmethod
    def build(cls, rules: Sequence[CompiledRule], candidates: Sequence[int]) -> Gates:
        ungated: list[int] = []
        by_path: dict[tuple[str, ...], list[tuple[int, Test]]] = {}
        for i in candidates:
            gate = gate_of(rules[i])
            if gate is None or gate.fields is None:
                ungated.append(i)
            else:
                by_path.setdefault(gate.fields, []).append((i, gate))
        paths = []
        for fields, gated in by_path.items():
            if len(gated) < 2:  # nothing to share
                ungated.extend(i for i, _ in gated)
                continue
            heads: dict[str, list[int]] = {}
            whole: dict[str, list[int]] = {}
            tests: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
            for i, gate in gated:
                assert gate.literal is not None
                text, exact = gate.literal
                (whole if exact else heads).setdefault(text, []).append(i)
                test = (gate.at, gate.path, gate.operator)
                tests.setdefault(test, []).append((i, rules[i].rule.name))
            paths.append(
                _Path(
                    fields,
                    tuple(gated),
                    tuple((t, tuple(members)) for t, members in tests.items()),
                    tuple(sorted({len(h) for h in heads})),
                    {h: tuple(v) for h, v in heads.items()},
                    {t: tuple(v) for t, v in whole.items()},
                )
            )
        return cls(tuple(sorted(ungated)), tuple(paths))

    def evaluate(
        self,
        rules: Sequence[CompiledRule],
        hook: WebhookReceived,
        facts: Facts,
        out: list[RuleEvaluation | None],
        grouped: dict[Key, list[Member]] | None = None,
    ) -> list[int]:
        """Write each candidate's evaluation into ``out``; the positions that matched.
        With ``grouped``, the rules ruled out together are put there by the test they
        failed and the value it saw (rules.passed_over), and left None in ``out``."""
        matched = []
        for i in self.ungated:
            result = out[i] = rules[i].evaluate_candidate(hook, facts)
            if result.matched:
                matched.append(i)
        if not self.paths:
            return matched
        doc = facts.doc
        for path in self.paths:
            value: Any = doc
            for name in path.fields:
                value = value.get(name) if isinstance(value, dict) else None
            if not isinstance(value, str):
                for i, _ in path.rules:
                    result = out[i] = rules[i].evaluate_candidate(hook, facts)
                    if result.matched:
                        matched.append(i)
                continue
            maybe = path.possible(value)
            for i in sorted(maybe):
                result = out[i] = rules[i].evaluate_candidate(hook, facts)
                if result.matched:
                    matched.append(i)
            # Every other one failed its first test on this text, as its evaluation would
            # say; the same test at the same place fails for the same reason.
            saw = shown(value)
            for (at, where, operator), members in path.tests:
                reason = Outcome(False, at, where, operator, saw).reason()
                if grouped is not None:
                    ruled = [(i, name, reason, None) for i, name in members if i not in maybe]
                    if ruled:
                        grouped.setdefault((at, where, operator, saw), []).extend(ruled)
                    continue
                for i, name in members:
                    if i not in maybe:
                        out[i] = RuleEvaluation(
                            rule=name, matched=False, reason=reason, failed=at, path=where,
                            operator=operator, saw=saw,
                        )  # fmt: skip
        matched.sort()
        return matched
