"""Rule conditions: every operator, all/any/not, what a failed test says, compile errors,
and that no payload makes a condition raise."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookbus_router.conditions import (
    RECORDED_HEADERS,
    SAW_LIMIT,
    ConditionError,
    as_time,
    compile_condition,
)
from hookbus_router.conditions import Test as PathTest

PUSH: dict[str, Any] = {
    "payload": {
        "ref": "refs/heads/main",
        "size": 3,
        "forced": False,
        "ratio": "0.75",
        "commits": [
            {"id": "a1", "message": "fix typo", "timestamp": "2026-11-22T07:00:00Z"},
            {"id": "b2", "message": "ship it [deploy]", "timestamp": "2026-11-22T08:30:00+01:00"},
        ],
        "labels": ["ready", "backend"],
        "sender": {"login": "dependabot[bot]", "id": 49699333},
        "pushed_at": 1795849200,
        "head_commit": None,
        "nested": {"a": {"b": {"c": "deep"}}},
    },
    "event": {"type": "push", "source": "github", "branch": "main", "repository": "acme/app"},
    "headers": {"x-event-type": "push", "content-type": "application/json", "x-request-id": "2"},
}


def holds(spec: dict[str, Any], doc: dict[str, Any] = PUSH) -> bool:
    return compile_condition(spec).test(doc).held


# ------------------------------------------------------------------------- operators

CASES: list[tuple[dict[str, Any], bool]] = [
    # equals: JSON equality (true is not 1, 1 is 1.0), a list operand compares whole lists
    ({"path": "payload.ref", "equals": "refs/heads/main"}, True),
    ({"path": "payload.ref", "equals": "refs/heads/dev"}, False),
    ({"path": "payload.size", "equals": 3.0}, True),
    ({"path": "payload.forced", "equals": False}, True),
    ({"path": "payload.forced", "equals": 0}, False),
    ({"path": "payload.labels", "equals": ["ready", "backend"]}, True),
    ({"path": "payload.labels", "equals": ["backend", "ready"]}, False),
    ({"path": "payload.labels", "equals": "ready"}, True),  # a list: any element
    ({"path": "payload.sender", "equals": {"login": "dependabot[bot]", "id": 49699333}}, True),
    ({"path": "payload.missing", "equals": "x"}, False),
    # in
    ({"path": "event.repository", "in": ["acme/app", "acme/api"]}, True),
    ({"path": "event.repository", "in": ["acme/web"]}, False),
    ({"path": "payload.size", "in": [1, 2, 3]}, True),
    ({"path": "payload.missing", "in": ["x"]}, False),
    # glob: * and ? only; brackets stand for themselves
    ({"path": "payload.sender.login", "glob": "*[bot]"}, True),
    ({"path": "payload.sender.login", "glob": "*bot"}, False),
    ({"path": "payload.ref", "glob": "refs/heads/*"}, True),
    ({"path": "payload.ref", "glob": "refs/heads/mai?"}, True),
    ({"path": "payload.ref", "glob": "refs/tags/*"}, False),
    ({"path": "payload.commits[*].message", "glob": "*[deploy]"}, True),
    ({"path": "payload.size", "glob": "*"}, False),  # not a text
    # regex: re2, searched (anchor it to match the whole)
    ({"path": "payload.ref", "regex": "^refs/heads/(main|master)$"}, True),
    ({"path": "payload.ref", "regex": "heads"}, True),
    ({"path": "payload.ref", "regex": "^heads"}, False),
    ({"path": "payload.commits[*].id", "regex": "^b\\d$"}, True),
    # exists (a null counts as absent)
    ({"path": "payload.ref", "exists": True}, True),
    ({"path": "payload.missing", "exists": True}, False),
    ({"path": "payload.missing", "exists": False}, True),
    ({"path": "payload.head_commit", "exists": False}, True),
    ({"path": 'headers."x-event-type"', "exists": True}, True),
    # numbers: numbers, and texts that are numbers (headers hold text)
    ({"path": "payload.size", "gt": 2}, True),
    ({"path": "payload.size", "gt": 3}, False),
    ({"path": "payload.size", "ge": 3}, True),
    ({"path": "payload.size", "lt": 3.5}, True),
    ({"path": "payload.size", "le": 2}, False),
    ({"path": "payload.ratio", "lt": 1}, True),
    ({"path": 'headers."x-request-id"', "ge": 2}, True),
    ({"path": "payload.ref", "gt": 1}, False),
    ({"path": "payload.forced", "ge": 0}, False),  # a boolean is not a number
    ({"path": "length(payload.commits)", "ge": 2}, True),
    # times: ISO texts, TOML date-times, seconds since the epoch
    ({"path": "payload.commits[0].timestamp", "after": "2026-11-22T06:59:59Z"}, True),
    ({"path": "payload.commits[0].timestamp", "before": "2026-11-22T07:00:00Z"}, False),
    (
        {
            "path": "payload.commits[1].timestamp",
            "before": datetime(2026, 11, 22, 7, 31, tzinfo=UTC),
        },
        True,
    ),
    ({"path": "payload.commits[*].timestamp", "after": "2026-11-22T07:20:00Z"}, True),
    (
        {"path": "payload.commits[0].timestamp", "ge": datetime(2026, 11, 22, 7, 0, tzinfo=UTC)},
        True,
    ),
    ({"path": "payload.commits[0].timestamp", "lt": date(2026, 11, 22)}, False),
    ({"path": "payload.pushed_at", "after": "2026-11-28"}, True),
    ({"path": "payload.ref", "after": "2020-01-01"}, False),  # not a time
    (
        {
            "path": "payload.commits[0].timestamp",
            "equals": datetime(2026, 11, 22, 7, 0, tzinfo=UTC).astimezone(),
        },
        True,
    ),
    # contains: a substring, an element (or an element's substring), a key
    ({"path": "payload.ref", "contains": "heads"}, True),
    ({"path": "payload.ref", "contains": "tags"}, False),
    ({"path": "payload.commits[*].message", "contains": "[deploy]"}, True),
    ({"path": "payload.commits[*].message", "contains": "[skip]"}, False),
    ({"path": "payload.labels", "contains": "ready"}, True),
    ({"path": "payload.sender", "contains": "login"}, True),
    ({"path": "payload.size", "contains": "3"}, False),
    ({"path": "payload.nested.a.b.c", "equals": "deep"}, True),
]


@pytest.mark.parametrize(("spec", "expected"), CASES)
def test_operator(spec, expected):
    assert holds(spec) is expected


# ------------------------------------------------------------------------ combinators


def test_all_any_not():
    main = {"path": "payload.ref", "equals": "refs/heads/main"}
    dev = {"path": "payload.ref", "equals": "refs/heads/dev"}

    assert holds({"all": [main, {"path": "payload.size", "gt": 1}]})
    assert not holds({"all": [main, dev]})
    assert holds({"any": [dev, main]})
    assert not holds({"any": [dev, {"path": "payload.size", "gt": 9}]})
    assert holds({"not": dev})
    assert not holds({"not": main})
    assert holds({"not": {"not": main}})


def test_the_example_of_the_docs_excludes_bots():
    rule = {
        "all": [
            {"path": "payload.ref", "equals": "refs/heads/main"},
            {"path": "payload.commits[*].message", "contains": "[deploy]"},
            {"not": {"path": "payload.sender.login", "glob": "*[bot]"}},
        ]
    }
    human = {**PUSH, "payload": {**PUSH["payload"], "sender": {"login": "alice"}}}

    assert holds(rule, human)
    outcome = compile_condition(rule).test(PUSH)
    assert not outcome.held
    assert outcome.at == "when.all[2]"
    assert outcome.path == "payload.sender.login"
    assert outcome.operator == "not glob"
    assert outcome.saw == '"dependabot[bot]"'


# --------------------------------------------------------------- what a failure says


def test_a_failure_names_the_first_failed_test_its_path_operator_and_value():
    cond = compile_condition(
        {
            "all": [
                {"path": "event.type", "equals": "push"},
                {"path": "payload.ref", "glob": "refs/tags/*"},
                {"path": "payload.size", "gt": 100},
            ]
        }
    )

    outcome = cond.test(PUSH)

    assert (outcome.held, outcome.at, outcome.path, outcome.operator, outcome.saw) == (
        False,
        "when.all[1]",
        "payload.ref",
        "glob",
        '"refs/heads/main"',
    )
    assert "payload.ref glob" in outcome.reason()


def test_a_missing_value_is_shown_as_nothing():
    outcome = compile_condition({"path": "payload.nope", "equals": 1}).test(PUSH)

    assert outcome.saw == "nothing"


def test_any_says_what_each_branch_saw():
    outcome = compile_condition(
        {"any": [{"path": "payload.ref", "equals": "x"}, {"path": "payload.size", "gt": 5}]}
    ).test(PUSH)

    assert not outcome.held
    assert outcome.at == "when"
    assert outcome.operator == "any"
    assert "payload.ref" in str(outcome.saw)
    assert "payload.size" in str(outcome.saw)


def test_a_large_value_seen_is_cut_to_the_limit():
    doc = {**PUSH, "payload": {"body": "x" * 10_000}}

    outcome = compile_condition({"path": "payload.body", "equals": "y"}).test(doc)

    assert outcome.saw is not None
    assert len(outcome.saw) == SAW_LIMIT
    assert outcome.saw.endswith("…")


def test_a_function_given_the_wrong_type_fails_the_test_without_raising():
    outcome = compile_condition({"path": "length(payload.size)", "gt": 1}).test(PUSH)

    assert not outcome.held
    assert str(outcome.saw).startswith("error:")


# ------------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                "all": [
                    {"path": "payload.ref", "equals": "x"},
                    {"path": "payload.x", "contain": "a"},
                ]
            },
            'when.all[1]: unknown operator "contain" (did you mean "contains"?)',
        ),
        ({"path": "payload.ref"}, "when: a test takes exactly one operator"),
        ({"path": "payload.ref", "equals": 1, "glob": "x"}, "exactly one operator"),
        ({"path": "paylod.ref", "equals": 1}, 'starts at "paylod"; a path starts at payload'),
        ({"path": "paylod.ref", "equals": 1}, 'did you mean "payload"?'),
        ({"path": "payload.[", "equals": 1}, "is not a JMESPath expression"),
        ({"path": 'headers."x-hub-signature-256"', "exists": True}, "does not record the header"),
        ({"path": "event.branches", "equals": "main"}, 'did you mean "branch"?'),
        ({"path": "payload.ref", "regex": "(unclosed"}, 'regex "(unclosed" does not compile'),
        ({"path": "payload.ref", "regex": "(?=lookahead)"}, "does not compile"),
        ({"path": "payload.ref", "in": "main"}, '"in" takes a list'),
        ({"path": "payload.ref", "in": []}, '"in" takes a list'),
        ({"path": "payload.ref", "glob": 3}, '"glob" takes a text'),
        ({"path": "payload.ref", "exists": "yes"}, '"exists" takes true or false'),
        ({"path": "payload.size", "gt": "many"}, '"gt" takes a number or a time'),
        ({"path": "payload.size", "before": 3}, '"before" takes a time'),
        ({"path": "payload.size", "contains": ["a"]}, '"contains" takes a text'),
        ({"all": []}, "when.all: takes a non-empty list"),
        ({"all": [{"path": "payload.a", "exists": True}], "path": "x"}, '"all" stands alone'),
        ({"not": "x"}, "when.not: a condition is a table"),
        ({"pth": "payload.ref", "equals": 1}, 'unknown key "equals"'),
        ({"alll": []}, 'did you mean "all"?'),
        ({}, "when: a condition is a table"),
    ],
)
def test_a_bad_condition_is_refused_naming_where_and_what(spec, message):
    with pytest.raises(ConditionError) as info:
        compile_condition(spec)

    assert message in str(info.value)


def test_the_headers_conditions_may_read_are_the_ones_the_receiver_records():
    from hookbus_receiver.inbound import KEPT_HEADERS

    assert tuple(RECORDED_HEADERS) == tuple(KEPT_HEADERS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T07:00:00Z", datetime(2026, 11, 22, 7, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (date(2026, 1, 2), datetime(2026, 1, 2, tzinfo=UTC)),
        ("tomorrow", None),
        (True, None),
        (1e300, None),
        ("x" * 100, None),
    ],
)
def test_as_time(value, expected):
    assert as_time(value) == expected


# ------------------------------------------------------------- no payload can raise

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["ref", "a", "b", "commits", "0"]), children, max_size=4)
    ),
    max_leaves=30,
)

EVERY_OPERATOR = compile_condition(
    {
        "any": [
            {"path": "payload.ref", "equals": "x"},
            {"path": "payload.a", "in": [1, "x", None]},
            {"path": "payload.a.b", "glob": "*x?"},
            {"path": "payload.commits[*].a", "regex": "^a+$"},
            {"path": "payload.b", "exists": True},
            {"path": "payload.a", "gt": 1},
            {"path": "payload.a[0]", "le": 1.5},
            {"path": "payload.b", "before": "2026-01-01T00:00:00Z"},
            {"path": "payload.a", "after": datetime(2026, 1, 1, tzinfo=UTC)},
            {"path": "payload.a", "contains": "x"},
            {"path": "payload", "contains": "ref"},
            {"path": "length(payload.a)", "gt": 0},
            {"path": "sort(payload.a)", "equals": [1]},
            {"path": "payload.*.b | [0]", "equals": 1},
            {"not": {"path": "payload.ref", "glob": "*"}},
        ]
    }
)


@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_no_payload_makes_a_condition_raise(payload):
    outcome = EVERY_OPERATOR.test({"payload": payload, "event": {}, "headers": {}})

    assert isinstance(outcome.held, bool)
    assert outcome.saw is None or len(outcome.saw) <= SAW_LIMIT


# --------------------------------------------- compiled shortcuts decide as the long way

FIELD_PATHS = ["payload", "payload.ref", "payload.a.b", "payload.commits.a", 'payload."0".ref']


@settings(max_examples=300, deadline=None)
@given(
    payload=json_values,
    path=st.sampled_from(FIELD_PATHS),
    op=st.sampled_from(
        [("equals", "x"), ("glob", "re*s/?"), ("glob", "x"), ("glob", "*"), ("exists", True)]
    ),
)
def test_a_path_of_fields_is_read_as_jmespath_reads_it(payload, path, op):
    test = compile_condition({"path": path, op[0]: op[1]})
    assert isinstance(test, PathTest)
    assert test.fields is not None  # read without the interpreter
    doc = {"payload": payload, "event": {}, "headers": {}}

    assert test.test(doc) == replace(test, fields=None).test(doc)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("payload.ref", ("payload", "ref")),
        ('headers."x-event-type"', ("headers", "x-event-type")),
        ('payload.a."b.c"', ("payload", "a", "b.c")),
        ("payload.commits[0].id", None),
        ("payload.a | b", None),
        ("length(payload.a)", None),
    ],
)
def test_only_paths_that_name_fields_alone_are_read_without_jmespath(path, fields):
    test = compile_condition({"path": path, "exists": True})
    assert isinstance(test, PathTest)
    assert test.fields == fields


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(alphabet="ab*?.[", max_size=6),
    value=st.text(alphabet="ab.[", max_size=8) | st.none() | st.integers(),
)
def test_a_glob_holds_exactly_when_its_pattern_matches_the_whole_text(pattern, value):
    test = compile_condition({"path": "payload.v", "glob": pattern})
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    expected = isinstance(value, str) and re.fullmatch(regex, value, re.DOTALL) is not None

    assert test.test({"payload": {"v": value}}).held is expected


def test_what_a_test_saw_is_shown_when_read_and_the_same_every_time():
    test = compile_condition({"path": "payload.ref", "equals": "x"})
    outcome = test.test(PUSH)

    assert outcome.saw == '"refs/heads/main"'
    assert outcome.saw == '"refs/heads/main"'
    assert 'saw "refs/heads/main"' in outcome.reason()
