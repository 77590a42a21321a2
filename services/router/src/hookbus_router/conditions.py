"""A rule's ``when``: conditions on a webhook, compiled once at load and evaluated per event.

A condition is a TOML table: ``{ all = [...] }``, ``{ any = [...] }``, ``{ not = {...} }``,
or a test ``{ path = "<JMESPath>", <operator> = <operand> }``. Paths start at ``payload``
(the parsed body), ``event`` (the facts the receiver read) or ``headers`` (those it
recorded). Evaluation never raises: whatever a payload holds, a test holds or it does not,
and a failed one says where it was, what it wanted and what it saw.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Final, cast

import jmespath
import msgspec
import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints
from jmespath.exceptions import JMESPathError

from hookbus_common.errors import ConfigError

# How much of a value a failed test shows (the routing record is read by people).
SAW_LIMIT: Final = 200

ROOTS: Final = ("payload", "event", "headers")
# The facts of ``event`` a path may name (see ``event_facts``).
EVENT_FIELDS: Final = (
    "type",
    "id",
    "source",
    "kind",
    "delivery_id",
    "repository",
    "branch",
    "tag",
    "commit",
    "sender",
    "image",
    "time",
    "tenant",
)
# The headers the receiver keeps with a webhook (its KEPT_HEADERS; a test holds the two
# lists equal). Others, signatures above all, are never recorded, so never seen here.
RECORDED_HEADERS: Final = (
    "content-type",
    "user-agent",
    "idempotency-key",
    "webhook-id",
    "x-event-type",
    "x-request-id",
)

OPERATORS: Final = (
    "equals",
    "in",
    "glob",
    "regex",
    "exists",
    "gt",
    "ge",
    "lt",
    "le",
    "before",
    "after",
    "contains",
)
_COMBINATORS: Final = ("all", "any", "not")

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is a ConfigError, not a line on stderr


# ------------------------------------------------------------------------ outcome


_UNREAD: Final = object()


class Outcome:
    """Whether a condition held, and the test that decided it: where it is in the rule
    (``when.all[1]``), its path, its operator and the value it saw (bounded text).

    The value is shown (``saw``) only when read: a test that holds on the way to a match
    never is, and a rule set of many rules runs many of those per event."""

    __slots__ = ("_saw", "_value", "at", "held", "operator", "path")

    def __init__(
        self,
        held: bool,
        at: str,
        path: str | None,
        operator: str,
        saw: str | None = None,
        *,
        value: Any = _UNREAD,
    ) -> None:
        self.held = held
        self.at = at
        self.path = path
        self.operator = operator
        self._saw = saw
        self._value = value

    @property
    def saw(self) -> str | None:
        if self._value is not _UNREAD:
            self._saw, self._value = shown(self._value), _UNREAD
        return self._saw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.held, self.at, self.path, self.operator, self.saw) == (
            other.held,
            other.at,
            other.path,
            other.operator,
            other.saw,
        )

    __hash__ = None  # type: ignore[assignment]  # compared by value, never a key

    def __repr__(self) -> str:
        return (
            f"Outcome(held={self.held!r}, at={self.at!r}, path={self.path!r},"
            f" operator={self.operator!r}, saw={self.saw!r})"
        )

    def reason(self) -> str:
        where = f"{self.at}: " if self.at else ""
        what = f"{self.path} {self.operator}" if self.path else self.operator
        return f"{where}{what} did not hold (saw {self.saw})"


def shown(value: Any) -> str:
    """A value as a failed test shows it: JSON, at most ``SAW_LIMIT`` characters."""
    if value is None:
        return "nothing"
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError, RecursionError, OverflowError):
        text = repr(value)
    return text if len(text) <= SAW_LIMIT else text[: SAW_LIMIT - 1] + "…"


# -------------------------------------------------------------------- comparisons


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality as JSON means it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def as_time(value: Any) -> datetime | None:
    """A time from an ISO 8601 text, a TOML date-time, or seconds since the epoch; a time
    without an offset is UTC. None when ``value`` is none of those."""
    when: datetime
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime.combine(value, time())
    elif _is_number(value):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _as_number(value: Any) -> float | None:
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and 0 < len(value) <= 64:  # a header holds text
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "before": lambda a, b: a < b,
    "after": lambda a, b: a > b,
}


# ------------------------------------------------------------------ compiled nodes


class Node:
    at: str

    def test(self, doc: Mapping[str, Any]) -> Outcome:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Test(Node):
    at: str
    path: str
    operator: str
    expr: Any  # jmespath's ParsedResult
    check: Callable[[Any], bool]
    # Whether a list seen at the path holds when any element does (every operator but
    # exists, and equals with a list operand).
    any_element: bool
    # A path that only names fields (payload.pull_request.base.ref): the names, read
    # straight from the document (what JMESPath gives, without its interpreter).
    fields: tuple[str, ...] | None = None
    # What every text that holds starts with (a glob's head before its first wildcard),
    # or is (True: a glob without one, equals with a text); None: the test says nothing
    # of it. A text without it fails the test (gates.py rules such rules out together).
    literal: tuple[str, bool] | None = None

    def test(self, doc: Mapping[str, Any]) -> Outcome:
        try:
            if self.fields is not None:
                value: Any = doc
                for name in self.fields:
                    value = value.get(name) if isinstance(value, dict) else None
            else:
                value = self.expr.search(doc)
            held = self._holds(value)
        except (JMESPathError, RecursionError, TypeError, ValueError, OverflowError) as exc:
            # A function given the wrong type, a payload nested deeper than the stack:
            # the test does not hold, and says why.
            return Outcome(False, self.at, self.path, self.operator, f"error: {exc}"[:SAW_LIMIT])
        return Outcome(held, self.at, self.path, self.operator, value=value)

    def _holds(self, value: Any) -> bool:
        if self.any_element and isinstance(value, list):
            return any(self.check(v) for v in value)
        return self.check(value)


@dataclass(frozen=True, slots=True)
class All(Node):
    at: str
    children: tuple[Node, ...]

    def test(self, doc: Mapping[str, Any]) -> Outcome:
        last = Outcome(True, self.at, None, "all", None)
        for child in self.children:
            last = child.test(doc)
            if not last.held:
                return last
        return last


@dataclass(frozen=True, slots=True)
class AnyOf(Node):
    at: str
    children: tuple[Node, ...]

    def test(self, doc: Mapping[str, Any]) -> Outcome:
        seen = []
        for child in self.children:
            outcome = child.test(doc)
            if outcome.held:
                return outcome
            seen.append(f"{outcome.path or outcome.at}: {outcome.saw}")
        return Outcome(False, self.at, None, "any", shown("; ".join(seen)))


@dataclass(frozen=True, slots=True)
class Not(Node):
    at: str
    child: Node

    def test(self, doc: Mapping[str, Any]) -> Outcome:
        inner = self.child.test(doc)
        return Outcome(not inner.held, self.at, inner.path, f"not {inner.operator}", inner.saw)


# -------------------------------------------------------------------- compiling


class ConditionError(ConfigError):
    """A condition that cannot be compiled; the message names where it is (``when.all[1]``)."""


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _leftmost(node: dict[str, Any]) -> dict[str, Any] | None:
    """The first field a parsed JMESPath expression reads (None for a function, a literal
    or the current node ``@``)."""
    while node.get("type") in (
        "subexpression",
        "index_expression",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
        "pipe",
    ):
        node = node["children"][0]
    return node if node.get("type") == "field" else None


def _second(node: dict[str, Any]) -> str | None:
    """The field read right after the root (``headers.x`` gives ``x``), if it is one."""
    while node.get("type") in ("index_expression", "projection", "flatten", "pipe"):
        node = node["children"][0]
    if node.get("type") == "subexpression":
        children = node["children"]
        if _leftmost(children[0]) is children[0] and children[1].get("type") == "field":
            return str(children[1]["value"])
        return _second(children[0])
    return None


def field_names(parsed: dict[str, Any]) -> tuple[str, ...] | None:
    """The names of a path that only names fields (``payload.a."b-c"``), else None."""
    if parsed.get("type") == "field":
        return (str(parsed["value"]),)
    if parsed.get("type") == "subexpression":
        names: list[str] = []
        for child in parsed["children"]:
            part = field_names(child)
            if part is None:
                return None
            names.extend(part)
        return tuple(names)
    return None


def compile_path(path: Any, at: str) -> Any:
    """A JMESPath expression starting at payload, event or headers, compiled."""
    if not isinstance(path, str) or not path.strip():
        raise ConditionError(f"{at}: path must be a JMESPath text such as payload.ref")
    try:
        expr = jmespath.compile(path)
    except JMESPathError as exc:
        msg = str(exc).replace("\n", " ")
        raise ConditionError(f'{at}: path "{path}" is not a JMESPath expression: {msg}') from None
    parsed = cast(dict[str, Any], expr.parsed)
    root = _leftmost(parsed)
    if root is not None:
        name = str(root["value"])
        if name not in ROOTS:
            raise ConditionError(
                f'{at}: path "{path}" starts at "{name}"; a path starts at payload, event or'
                f" headers{_suggest(name, ROOTS)}"
            )
        field = _second(parsed)
        if name == "headers" and field is not None and field not in RECORDED_HEADERS:
            raise ConditionError(
                f'{at}: path "{path}": the receiver does not record the header "{field}";'
                f" it records {', '.join(RECORDED_HEADERS)} (write hyphenated names quoted:"
                ' headers."x-event-type")'
            )
        if name == "event" and field is not None and field not in EVENT_FIELDS:
            raise ConditionError(
                f'{at}: path "{path}": an event has no "{field}"{_suggest(field, EVENT_FIELDS)};'
                f" it has {', '.join(EVENT_FIELDS)}"
            )
    return expr


def _text(value: Any, at: str, op: str) -> str:
    if not isinstance(value, str):
        raise ConditionError(f'{at}: "{op}" takes a text, not {shown(value)}')
    return value


def _check_for(op: str, operand: Any, at: str) -> tuple[Callable[[Any], bool], bool]:
    """The test of one operator and its operand, and whether a list seen holds when any
    element does."""
    match op:
        case "equals":
            if isinstance(operand, datetime | date):
                moment = as_time(operand)
                return (lambda v: (t := as_time(v)) is not None and t == moment), True
            return (lambda v: _same(v, operand)), not isinstance(operand, list)
        case "in":
            if not isinstance(operand, list) or not operand:
                raise ConditionError(f'{at}: "in" takes a list of values, not {shown(operand)}')
            options = list(operand)
            return (lambda v: v is not None and any(_same(v, o) for o in options)), True
        case "glob":
            pattern = _text(operand, at, op)
            glob = _glob(pattern)
            # What every text it matches starts with: most texts fail there, cheaply.
            head = pattern[: min((i for i, ch in enumerate(pattern) if ch in "*?"), default=0)]
            if "*" not in pattern and "?" not in pattern:
                return (lambda v: v == pattern), True
            return (
                lambda v: (
                    isinstance(v, str) and v.startswith(head) and glob.fullmatch(v) is not None
                )
            ), True
        case "regex":
            try:
                regex = re2.compile(_text(operand, at, op), options=_RE2_OPTIONS)
            except re2.error as exc:
                why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                raise ConditionError(f'{at}: regex "{operand}" does not compile: {why}') from None
            return (lambda v: isinstance(v, str) and regex.search(v) is not None), True
        case "exists":
            if not isinstance(operand, bool):
                raise ConditionError(f'{at}: "exists" takes true or false, not {shown(operand)}')
            return (lambda v: (v is not None) == operand), False
        case "gt" | "ge" | "lt" | "le" | "before" | "after":
            compare = _ORDER[op]
            moment = as_time(operand) if not _is_number(operand) else None
            if op in ("before", "after") or moment is not None:
                if moment is None:
                    raise ConditionError(
                        f'{at}: "{op}" takes a time (2026-01-01T00:00:00Z), not {shown(operand)}'
                    )
                return (lambda v: (t := as_time(v)) is not None and compare(t, moment)), True
            bound = _as_number(operand)
            if bound is None or isinstance(operand, str):
                raise ConditionError(f'{at}: "{op}" takes a number or a time, not {shown(operand)}')
            return (lambda v: (n := _as_number(v)) is not None and compare(n, bound)), True
        case "contains":
            if isinstance(operand, dict | list) or operand is None:
                raise ConditionError(f'{at}: "contains" takes a text, number or boolean')
            return (lambda v: _contains(v, operand)), False
    raise AssertionError(op)  # pragma: no cover - every operator is a case above


def _glob(pattern: str) -> Any:
    """A glob of ``*`` (any text) and ``?`` (one character); everything else stands for
    itself, so ``*[bot]`` is every name ending in ``[bot]``. Matched by re2, in linear
    time however many stars."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re2.escape(ch) for ch in pattern)
    return re2.compile("(?s)" + "".join(parts), options=_RE2_OPTIONS)


def _contains(value: Any, part: Any) -> bool:
    """A text holds the text ``part``; a list holds an element equal to it (or, for
    texts, holding it); an object holds it as a key."""
    if isinstance(value, str):
        return isinstance(part, str) and part in value
    if isinstance(value, list):
        return any(
            _same(v, part) or (isinstance(v, str) and isinstance(part, str) and part in v)
            for v in value
        )
    if isinstance(value, dict):
        return isinstance(part, str) and part in value
    return False


def compile_condition(spec: Any, at: str = "when") -> Node:
    """Compile one condition; ConditionError names ``at`` and what is wrong there."""
    if not isinstance(spec, dict) or not spec:
        raise ConditionError(
            f"{at}: a condition is a table: {{ all = [...] }}, {{ any = [...] }},"
            ' { not = {...} } or { path = "...", <operator> = ... }'
        )
    combinators = [k for k in spec if k in _COMBINATORS]
    if combinators:
        if len(spec) != 1:
            others = sorted(k for k in spec if k != combinators[0])
            raise ConditionError(
                f'{at}: "{combinators[0]}" stands alone in its table; put {others} in a'
                " condition of its own"
            )
        key = combinators[0]
        value = spec[key]
        if key == "not":
            return Not(at, compile_condition(value, f"{at}.not"))
        if not isinstance(value, list) or not value:
            raise ConditionError(f"{at}.{key}: takes a non-empty list of conditions")
        children = tuple(compile_condition(c, f"{at}.{key}[{i}]") for i, c in enumerate(value))
        return All(at, children) if key == "all" else AnyOf(at, children)
    if "path" not in spec:
        unknown = sorted(spec)
        raise ConditionError(
            f'{at}: a test needs a path; unknown key "{unknown[0]}"'
            f"{_suggest(unknown[0], (*_COMBINATORS, 'path', *OPERATORS))}"
        )
    path = spec["path"]
    expr = compile_path(path, at)
    ops = [k for k in spec if k != "path"]
    for key in ops:
        if key not in OPERATORS:
            raise ConditionError(f'{at}: unknown operator "{key}"{_suggest(key, OPERATORS)}')
    if len(ops) != 1:
        raise ConditionError(
            f"{at}: a test takes exactly one operator ({', '.join(OPERATORS)}), not"
            f" {len(ops)}{': ' + ', '.join(ops) if ops else ''}"
        )
    op = ops[0]
    check, any_element = _check_for(op, spec[op], at)
    return Test(
        at, path, op, expr, check, any_element, field_names(expr.parsed), _literal(op, spec[op])
    )


def _literal(op: str, operand: Any) -> tuple[str, bool] | None:
    """Test.literal of a compiled test (its operand is known to be good)."""
    if op == "equals" and isinstance(operand, str):
        return operand, True
    if op == "glob":
        stars = [i for i, ch in enumerate(operand) if ch in "*?"]
        return (operand[: stars[0]], False) if stars else (operand, True)
    return None
