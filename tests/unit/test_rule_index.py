"""The rule index (index.py) decides exactly as evaluating every rule: the same
evaluations, in the same order, and the same routing records and requests, for rules of
every kind of filter and events of every kind of fact."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hookbus_common import events as ev
from hookbus_router.config import Rule, RuleEvent, ShellAction
from hookbus_router.index import EVALUATIONS_KEPT, TRIPLES_KEPT
from hookbus_router.routing import route
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
    body = {"ref": f"refs/heads/{branch}" if branch else "refs/tags/v1", "n": n}
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
