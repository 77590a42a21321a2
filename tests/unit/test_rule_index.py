"""The rule index (index.py) decides exactly as evaluating every rule: the same
evaluations, in the same order, and the same routing records and requests, for rules of
every kind of filter and events of every kind of fact."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hookbus_cli.events import decisions
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.eventlog import LoggedEvent
from hookbus_router.config import Rule, RuleEvent, ShellAction
from hookbus_router.index import EVALUATIONS_KEPT, TRIPLES_KEPT
from hookbus_router.routing import make_handler, route
from hookbus_router.rules import Facts, RuleSet, glob_matcher, glob_passes

SOURCES = ["github", "gitlab-main", "image-push", "ptn_01ab"]
EVENTS = ["push", "pull_request", "Push Hook", "release"]
REPOS = ["acme/app", "acme/api", "other/app", None]
BRANCHES = ["main", "dev", None]

GLOBS = st.one_of(
    st.just("*"),
    st.sampled_from([*SOURCES, *EVENTS, "acme/app", "acme/*", "git*", "*hook", "p?sh", "[ab]*"]),
    st.lists(
        st.sampled_from([*SOURCES, *EVENTS, "acme/*", "*/app", "ptn_*"]), min_size=1, max_size=3
    ),
)
WHEN = st.sampled_from(
    [
        None,
        {"path": "payload.ref", "equals": "refs/heads/main"},
        {"path": "payload.n", "gt": 1},
        {
            "any": [
                {"path": "payload.ref", "glob": "refs/tags/*"},
                {"path": "event.branch", "exists": True},
            ]
        },
        # Rules ruled out together by a first test on the same path (gates.py).
        {"path": "payload.ref", "glob": "refs/heads/ma*"},
        {"path": "payload.ref", "glob": "refs/tags/v?"},
        {"path": "payload.ref", "glob": "refs/heads/dev"},
        {"path": "payload.ref", "equals": "refs/heads/dev"},
        {"all": [{"path": "payload.ref", "glob": "refs/heads/*"}, {"path": "payload.n", "gt": 1}]},
        {"all": [{"path": 'payload."ref"', "glob": "*/main"}, {"path": "payload.n", "lt": 1}]},
    ]
)
ACTION = ShellAction(command=["./deploy.sh", "{{ event.source }}"])


@st.composite
def rules(draw: st.DrawFn) -> list[Rule]:
    out = []
    for i in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 5)) == 0:
            parts = [
                RuleEvent(source=draw(GLOBS), event=draw(GLOBS), repository=draw(GLOBS))
                for _ in range(2)
            ]
            out.append(
                Rule(
                    name=f"m{i}",
                    actions=[ACTION],
                    events=parts,
                    key="{{ payload.n }}",
                    window="1h",
                    enabled=draw(st.booleans()),
                )
            )
            continue
        out.append(
            Rule(
                name=f"r{i}",
                actions=[ACTION],
                source=draw(GLOBS),
                event=draw(GLOBS),
                repository=draw(GLOBS),
                branch=draw(st.sampled_from(["*", "main", ["dev", "rel*"]])),
                when=draw(WHEN),
                enabled=draw(st.integers(0, 4)) > 0,
            )
        )
    return out


def webhook(source: str, event: str, repo: str | None, branch: str | None, n: int) -> ev.Event:
    ref: str | list[str] = f"refs/heads/{branch}" if branch else "refs/tags/v1"
    if branch is None and n:  # not a text: every rule of the path is evaluated
        ref = ["refs/tags/v1", "refs/heads/main"]
    body = {"ref": ref, "n": n}
    data = ev.WebhookReceived(
        source=source,
        kind="github",
        event_type=event,
        repository=repo,
        branch=branch,
        payload=msgspec.Raw(msgspec.json.encode(body)),
    )
    return ev.make_event(data, source="/test", id=f"evt_{source}_{event}_{repo}_{branch}_{n}")


ALL_EVENTS = [
    webhook(s, e, r, b, n)
    for (s, e, r, b), n in itertools.product(
        itertools.product(SOURCES, EVENTS, REPOS, BRANCHES), [0, 2]
    )
]


@hsettings(max_examples=60, deadline=None)
@given(rules())
def test_the_index_decides_exactly_as_evaluating_every_rule(some: list[Rule]) -> None:
    indexed = RuleSet.build(some)
    plain = RuleSet.build(some, indexed=False)
    assert indexed.index is not None
    assert plain.index is None

    for event in ALL_EVENTS:
        hook = event.data
        a, matched = indexed.evaluate_matched(hook, Facts(hook, event_id=event.id))
        b = plain.evaluate(hook, Facts(hook, event_id=event.id))
        assert a == b
        assert matched == [i for i, e in enumerate(b) if e.matched]
        assert [(e.id, e.data) for e in route(indexed, event)] == [
            (e.id, e.data) for e in route(plain, event)
        ]
        assert [(e.id, e.data) for e in route(indexed, event, summarised=True)] == [
            (e.id, e.data) for e in route(plain, event, summarised=True)
        ]
        assert_the_summary_keeps_every_decision(indexed, event, b)


def assert_the_summary_keeps_every_decision(
    ruleset: RuleSet, event: ev.Event, full: list[ev.RuleEvaluation]
) -> None:
    """A summarised record names every rule once: the rules that failed the same test on
    the same value in a group whose test and value are each one's own decision's, every
    other rule with its decision."""
    (routed, *_) = route(ruleset, event, summarised=True)
    data = routed.data
    grouped = {name: g for g in data.passed_over for name in g.rules}
    by_name = {e.rule: e for e in full}
    named = [e.rule for e in data.evaluations] + [n for g in data.passed_over for n in g.rules]

    assert sorted(named) == sorted(by_name)
    assert data.evaluations == [e for e in full if e.rule not in grouped]
    for name, group in grouped.items():
        e = by_name[name]
        assert e.failed in ("enabled", "source", "event", "repository", "branch") or (
            e.failed or ""
        ).startswith("when")
        if (e.failed or "").startswith("when"):
            assert group.reason == e.reason  # a condition's reason names no rule's own
        assert (group.failed, group.path, group.operator, group.saw) == (
            e.failed, e.path, e.operator, e.saw,
        )  # fmt: skip
    assert data.matched == [e.rule for e in full if e.matched]


def test_only_the_candidates_are_evaluated_and_the_others_are_kept_per_triple() -> None:
    many = [
        Rule(name=f"r{i}", actions=[ACTION], source="github", repository=f"acme/svc-{i}")
        for i in range(200)
    ]
    many.append(Rule(name="all-pushes", actions=[ACTION], event="push"))
    ruleset = RuleSet.build(many)
    assert ruleset.index is not None
    event = webhook("github", "push", "acme/svc-7", "main", 0)

    result = ruleset.evaluate(event.data, Facts(event.data))

    assert [e.rule for e in result if e.matched] == ["r7", "all-pushes"]
    assert result[8].reason == "repository: 'acme/svc-7' does not match 'acme/svc-8'"
    pair = ruleset.index._pair(event.data, Facts(event.data))
    assert pair.candidates == (7, 200)


def test_the_triples_kept_are_bounded() -> None:
    ruleset = RuleSet.build([Rule(name="r", actions=[ACTION], source="github")])
    assert ruleset.index is not None
    for n in range(TRIPLES_KEPT + 10):
        hook = webhook("github", "push", f"acme/r{n}", "main", 0).data
        ruleset.evaluate(hook, Facts(hook))

    assert len(ruleset.index._triples) == TRIPLES_KEPT


def test_the_evaluations_kept_are_bounded_and_shared_between_triples() -> None:
    many = [Rule(name=f"r{i}", actions=[ACTION], source="gitlab-main") for i in range(100)]
    ruleset = RuleSet.build(many)
    assert ruleset.index is not None
    for n in range(20):
        hook = webhook("github", "push", f"acme/r{n}", "main", 0).data
        ruleset.evaluate(hook, Facts(hook))

    # Every rule fails at its source the same way for every repository: kept once.
    assert len(ruleset.index._kept) == 100
    for n in range(EVALUATIONS_KEPT // 100 + 1):
        hook = webhook(f"src-{n}", "push", "acme/app", "main", 0).data
        ruleset.evaluate(hook, Facts(hook))
    assert len(ruleset.index._kept) <= EVALUATIONS_KEPT


@hsettings(max_examples=200, deadline=None)
@given(
    GLOBS,
    st.sampled_from([*SOURCES, *EVENTS, *REPOS, "", "a[b", "acme/", "push hook"]),
)
def test_a_compiled_glob_passes_what_the_glob_passes(
    value: str | list[str], seen: str | None
) -> None:
    passes = glob_matcher(value)

    assert (True if passes is None else passes(seen)) is glob_passes(value, seen)


def test_the_routers_record_names_the_rules_passed_over_together() -> None:
    many = [
        Rule(name=f"r{i}", actions=[ACTION], source="github", repository=f"acme/svc-{i % 50}")
        for i in range(500)
    ] + [Rule(name=f"off-{i}", actions=[ACTION], enabled=False) for i in range(2)]
    ruleset = RuleSet.build(many)
    event = webhook("github", "push", "acme/svc-7", "main", 0)

    async def handled() -> list[ev.Event]:
        handler = make_handler(ruleset)
        incoming = Incoming(event=event, subject="s", deliveries=1, _msg=None)  # type: ignore[arg-type]
        return [out async for batch in handler(incoming) for out in batch]  # type: ignore[union-attr]

    routed, *requests = asyncio.run(handled())
    data = routed.data
    assert isinstance(data, ev.WebhookRouted)
    assert len(requests) == 10  # r7, r57, … r457
    assert [e.rule for e in data.evaluations] == [f"r{i}" for i in range(7, 500, 50)]
    other = [f"r{i}" for i in range(500) if i % 50 != 7]
    assert [(g.rules, g.failed, g.saw, g.reason) for g in data.passed_over] == [
        (other, "repository", '"acme/svc-7"', "repository: 'acme/svc-7' matches none of theirs"),
        (["off-0", "off-1"], "enabled", None, "rules are disabled"),
    ]
    assert len(ev.encode(routed)) < 8_000  # one decision per rule: about 80 KB
    # hookbus events --chain names every rule passed over, with why.
    raw = msgspec.json.decode(ev.encode(routed), type=ev.RawEvent)
    lines = decisions(LoggedEvent(seq=1, bus_subject="s", event=raw))
    assert f"- {', '.join(other)}: repository: 'acme/svc-7' matches none of theirs" in lines
    assert "- off-0, off-1: rules are disabled" in lines


def test_a_rule_alone_in_being_passed_over_keeps_its_own_decision() -> None:
    rules_ = [
        Rule(name="deploy", actions=[ACTION], source="github", branch="main"),
        Rule(name="nightly", actions=[ACTION], source="github", event="schedule"),
        Rule(name="off", actions=[ACTION], enabled=False),
    ]
    event = webhook("github", "push", "acme/app", "dev", 0)

    (routed,) = route(rules_, event, summarised=True)

    assert routed.data.passed_over == []
    assert [e.reason for e in routed.data.evaluations] == [
        "branch: 'dev' does not match 'main'",
        "event: 'push' does not match 'schedule'",
        "rule is disabled",
    ]


def test_rules_ruled_out_together_by_a_first_test_decide_as_each_evaluated() -> None:
    # Many rules whose conditions start with a glob or an equals on payload.ref, as an
    # organisation's rules for its branches do: one read of the path rules most out.
    gates = [
        {"path": "payload.ref", "glob": "refs/heads/ma*"},
        {"path": "payload.ref", "glob": "refs/heads/dev"},
        {"path": "payload.ref", "glob": "refs/tags/v?"},
        {"path": "payload.ref", "glob": "*/main"},
        {"path": "payload.ref", "equals": "refs/heads/dev"},
        {"path": 'payload."ref"', "glob": "refs/heads/*"},
        {"all": [{"path": "payload.ref", "glob": "refs/*"}, {"path": "payload.n", "gt": 1}]},
        {"not": {"path": "payload.ref", "glob": "refs/heads/ma*"}},  # not gated
    ]
    alone = {"path": 'payload."ref"', "equals": "refs/heads/x"}  # alone on its test
    some = [
        Rule(name=f"g{i}", actions=[ACTION], source=["github", "gitlab-main"], when=when)
        for i, when in enumerate([*gates * 3, alone])
    ]
    indexed = RuleSet.build(some)
    plain = RuleSet.build(some, indexed=False)

    for event in ALL_EVENTS:
        hook = event.data
        a, matched = indexed.evaluate_matched(hook, Facts(hook, event_id=event.id))
        b = plain.evaluate(hook, Facts(hook, event_id=event.id))
        assert a == b
        assert matched == [i for i, e in enumerate(b) if e.matched]
        # A router's record: those ruled out together are named together, made no
        # evaluation of one by one (and one alone on its test keeps its own decision).
        assert [(e.id, e.data) for e in route(indexed, event, summarised=True)] == [
            (e.id, e.data) for e in route(plain, event, summarised=True)
        ]
        assert_the_summary_keeps_every_decision(indexed, event, b)
    assert indexed.index is not None
    (pair, *_) = indexed.index._triples.values()
    assert [len(p.rules) for p in pair.gates.paths] == [22]  # every gated rule, one read
    assert pair.gates.ungated == tuple(range(7, 24, 8))


def test_rules_that_failed_the_same_test_on_the_same_value_are_named_together() -> None:
    org = [
        Rule(
            name=f"org-{i}",
            actions=[ACTION],
            repository="acme/*",
            when={"path": "payload.ref", "glob": f"refs/heads/org-{i}/*"},
        )
        for i in range(3)
    ]
    branches = [Rule(name=f"rel-{i}", actions=[ACTION], branch=[f"release-{i}"]) for i in range(2)]
    event = webhook("github", "push", "acme/app", "main", 0)

    (routed,) = route([*org, *branches], event, summarised=True)

    assert routed.data.evaluations == []
    assert [(g.rules, g.failed, g.saw, g.reason) for g in routed.data.passed_over] == [
        (
            ["org-0", "org-1", "org-2"],
            "when",
            '"refs/heads/main"',
            'when: payload.ref glob did not hold (saw "refs/heads/main")',
        ),
        (["rel-0", "rel-1"], "branch", '"main"', "branch: 'main' matches none of theirs"),
    ]
